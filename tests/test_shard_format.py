"""shard_tools.format: member names round-trip for every key make-shards allows, manifest errors name the file."""

import json
import re
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from foundation.schema import ConfigError
from pipeline.data import shardlists
from pipeline.search import features
from shard_tools import format as fmt
from shard_tools.rows import Row, finish_rows, safe_key
from shard_tools.verify import verify
from shard_tools.writer import sample_members

# ids as the sources read them: plain, dotted (file names), folders, spaces, non-ASCII, dashes only
IDS = ["1025", "clip_01-b", "a.b", "a_b", "video.mp4", "dir/sub/clip.x.mp4", " padded ", "日本", "---", "..", "a b"]
FRAME_NUMBERS = [0, 1, 7, 10, 99, 100, 999, 1000, 12345]


@pytest.mark.parametrize("source_id", IDS)
def test_member_names_round_trip_for_every_key_make_shards_writes(source_id):
    key = safe_key(source_id)
    assert "." not in key and "/" not in key  # the rule that makes "key = name up to the first dot" hold
    assert next(finish_rows([Row(key=key, captions=["c"], path="p.mp4")])).error is None
    for i in FRAME_NUMBERS:
        name = fmt.frame_member(key, i)
        assert name == f"{key}.{fmt.frame_suffix(i)}"
        assert fmt.split_member_name(name) == (key, fmt.frame_suffix(i))
        assert fmt.frame_index(fmt.split_member_name(name)[1]) == i
    assert fmt.split_member_name(fmt.caption_member(key)) == (key, fmt.CAPTION_SUFFIX)
    assert fmt.split_member_name(fmt.meta_member(key)) == (key, fmt.META_SUFFIX)
    assert fmt.frame_index(fmt.CAPTION_SUFFIX) is None and fmt.frame_index(fmt.META_SUFFIX) is None


def test_keys_with_dots_are_refused_before_they_reach_a_shard():
    """A dotted key would split wrongly ('a.b.000.jpg' -> key 'a'): rows must carry safe_key's keys."""
    assert fmt.split_member_name(fmt.frame_member("a.b", 0)) == ("a", "b.000.jpg")
    row = next(finish_rows([Row(key="a.b", captions=["c"], path="p.mp4", where="t.csv line 2")]))
    assert row.error[0] == "bad_row" and "t.csv line 2" in row.error[1] and "safe_key" in row.error[1]
    assert safe_key("a.b") != safe_key("a_b")  # replaced characters never merge two ids


def test_frame_names_are_three_digits_at_least_and_written_one_way():
    names = {0: "000.jpg", 3: "003.jpg", 42: "042.jpg", 999: "999.jpg", 1000: "1000.jpg"}
    assert {i: fmt.frame_suffix(i) for i in names} == names
    for suffix in [
        "3.jpg",
        "03.jpg",
        "0003.jpg",
        "003.png",
        "003.jpg.txt",
        "003",
        "jpg",
        "-01.jpg",
        "٣٣٣.jpg",
        "",
        "txt",
        "json",
        "abc.jpg",
    ]:
        assert fmt.frame_index(suffix) is None, suffix


def test_split_member_name_keeps_folders_and_splits_at_the_base_names_first_dot():
    assert fmt.split_member_name("dir/abc.003.jpg") == ("dir/abc", "003.jpg")
    assert fmt.split_member_name("d.x/abc.json") == ("d.x/abc", "json")
    assert fmt.split_member_name("abc") == ("abc", "")
    assert fmt.split_member_name(".hidden.txt") == ("", "hidden.txt")


def test_the_writer_names_members_with_these_functions():
    row = SimpleNamespace(
        key=safe_key("clip 7.mp4"),
        kind="video",
        captions=["first", "second"],
        source=lambda: {"id": "7", "path": None, "url": None},
        extra={},
    )
    decoded = SimpleNamespace(
        jpegs=[b"f0", b"f1", b"f2"],
        meta={
            "frame_indices": [0, 4, 8],
            "frame_timestamps": [0.0, 0.4, 0.8],
            "duration": 1.0,
            "fps": 10.0,
            "width": 4,
            "height": 2,
        },
    )
    members = sample_members(row, 5, decoded)
    assert [name for name, _ in members] == [fmt.frame_member(row.key, i) for i in range(3)] + [
        fmt.meta_member(row.key),
        fmt.caption_member(row.key),
    ]
    for name, data in members:
        key, suffix = fmt.split_member_name(name)
        assert key == row.key
        if (i := fmt.frame_index(suffix)) is not None:
            assert data == decoded.jpegs[i]
    assert dict(members)[fmt.caption_member(row.key)] == b"first"


def test_member_checksum_is_crc32_as_eight_lowercase_hex_digits():
    assert fmt.member_crc32(b"") == "00000000"
    assert fmt.member_crc32(b"abc") == "352441c2" == f"{zlib.crc32(b'abc'):08x}"
    assert fmt.member_crc32(b"\x00" * 5) != fmt.member_crc32(b"\x00" * 6)


def test_manifest_round_trip(tmp_path):
    manifest = {"format": fmt.FORMAT, "name": "d", "kind": "video", "shards": [{"path": "d-000000.tar", "samples": 1}]}
    path = fmt.write_manifest(tmp_path / "new", manifest)
    assert path == tmp_path / "new" / fmt.MANIFEST
    assert path.read_text() == json.dumps(manifest, indent=1) + "\n"
    assert fmt.read_manifest(path) == manifest
    assert [p.name for p in path.parent.iterdir()] == [fmt.MANIFEST]  # no temp file left behind


def test_a_missing_manifest_names_the_folder_and_what_to_do(tmp_path):
    path = tmp_path / fmt.MANIFEST
    with pytest.raises(fmt.ManifestMissingError) as caught:
        fmt.read_manifest(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is missing: {tmp_path} is not a finished make-shards folder")
    assert f"make-shards manifest {tmp_path}" in message
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, fmt.ManifestError)


def _refused_manifest(tmp_path, content: bytes, match: str | None = None) -> tuple[Path, str]:
    """(path, message) of the ManifestError that reading a manifest of `content` raises."""
    path = tmp_path / fmt.MANIFEST
    path.write_bytes(content)
    with pytest.raises(fmt.ManifestError, match=match) as caught:
        fmt.read_manifest(path)
    return path, str(caught.value)


@pytest.mark.parametrize("content", [b"{", b"\xff\xfe", b"", b"[" * 100_000 + b"]" * 100_000])
def test_a_manifest_that_is_not_json_names_the_file(tmp_path, content):
    path, message = _refused_manifest(
        tmp_path, content, r"is unreadable .*; write it again with `make-shards manifest "
    )
    assert message.startswith(f"{path} is unreadable")


@pytest.mark.parametrize("content", ["[]", "1", "null", '"fit-shards/1"'])
def test_a_manifest_that_is_not_an_object_names_the_file(tmp_path, content):
    path, message = _refused_manifest(tmp_path, content.encode(), r"not a manifest \(a JSON object\); write it again")
    assert message.startswith(f"{path} holds {content}")


@pytest.mark.parametrize("doc", [{"format": "fit-shards/2"}, {"name": "no format"}, {"format": None}])
def test_a_manifest_of_another_format_names_the_file(tmp_path, doc):
    path, message = _refused_manifest(tmp_path, json.dumps(doc).encode())
    assert message == f"{path} has format {doc.get('format')!r}, expected 'fit-shards/1' (write it with make-shards)"


def test_every_reader_reports_a_bad_manifest_in_its_own_terms(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / fmt.MANIFEST).write_text(json.dumps({"format": "other"}))
    expected = f"{folder / fmt.MANIFEST} has format 'other', expected 'fit-shards/1'"
    with pytest.raises(ConfigError) as caught:  # the loader names the config key too
        shardlists.resolve_shards(str(folder), "data.train[0].shards")
    assert str(caught.value).startswith(f"data.train[0].shards: {expected}")
    gone = tmp_path / "gone" / fmt.MANIFEST
    with pytest.raises(ConfigError, match=re.escape(f"data.train[0].shards: {gone} is missing: ")):
        shardlists.resolve_shards(str(gone), "data.train[0].shards")
    with pytest.raises(fmt.ManifestError, match=re.escape(expected)):
        features.pending_parts(folder, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'none' / fmt.MANIFEST} is missing"):
        features.pending_parts(tmp_path / "none", tmp_path / "out")
    report = verify(folder)  # verify reports, never raises
    assert report.problems == [f"{expected} (write it with make-shards)"]
