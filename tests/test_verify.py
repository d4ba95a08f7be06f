"""make-shards verify: every damaged member is named (checksums recorded at write time), and no content of
the folder, however wrong its type or shape, makes verify raise instead of reporting it."""

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

import media
from shard_tools.api import RunOptions, ShardOptions, make_shards
from shard_tools.verify import MANIFEST_FIELDS, REQUIRED, verify

WRONG_VALUES = [None, 1, -3, 2.5, True, "x", [], [1], {}, {"a": 1}]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    rows = []
    for i in range(3):
        clip = media.render_clip(root / "media" / f"c{i}.mp4", seconds=1, size=(64, 48), fps=10, pattern="testsrc2")
        rows.append({"key": f"clip{i}", "path": str(clip), "caption": f"clip number {i}"})
    out = root / "shards"
    report = make_shards(
        rows, out, ShardOptions(name="v", frames=4, samples_per_shard=2), RunOptions(workers=0, progress=False)
    )
    assert report.manifest["total_samples"] == 3
    assert verify(out).ok
    return out


@pytest.fixture
def folder(dataset, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(dataset, out)
    return out


def members_of(tar_path):
    """[(name, offset of its data, size)] of a shard."""
    with tarfile.open(tar_path) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar]


def flip_bit(path, offset, bit=0):
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def damaged_members(report):
    return sorted(p.split("member ", 1)[1].split(" ", 1)[0] for p in report.problems if "is damaged" in p)


def test_checksums_are_in_the_stats_records_not_the_manifest(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    assert all("crc32" not in s for s in manifest["shards"])
    for name in manifest["stats"]:
        for shard in json.loads((folder / name).read_text())["shards"]:
            assert sorted(shard["crc32"]) == sorted(m for m, _, _ in members_of(folder / shard["path"]))
    report = verify(folder)
    assert report.ok and report.unchecked_shards == [] and report.members_checked == 3 * 6


def test_every_single_damaged_member_is_named(dataset, tmp_path):
    """One flipped bit in each member of each shard in turn (frames, json, txt): verify names that member,
    and only that one, whether or not the damaged JPEG still decodes."""
    manifest = json.loads((dataset / "manifest.json").read_text())
    for shard in manifest["shards"]:
        for name, offset, size in members_of(dataset / shard["path"]):
            out = tmp_path / f"{name}"
            shutil.copytree(dataset, out)
            flip_bit(out / shard["path"], offset + size // 2, bit=3)
            report = verify(out)
            assert damaged_members(report) == [name], (name, report.problems)
            assert any(shard["path"] in p and name in p for p in report.problems)


def test_bit_flips_in_four_frames_are_all_reported(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    flipped = []
    for shard in manifest["shards"]:
        frames = [m for m in members_of(folder / shard["path"]) if m[0].endswith(".jpg")]
        for name, offset, size in frames[1::2][:2]:
            flip_bit(folder / shard["path"], offset + size * 2 // 3, bit=5)
            flipped.append(name)
    assert len(flipped) == 4
    assert damaged_members(verify(folder)) == sorted(flipped)


def test_shards_written_before_checksums_still_verify(folder):
    for stats in folder.glob("*.stats.json"):
        record = json.loads(stats.read_text())
        for shard in record["shards"]:
            del shard["crc32"]
        stats.write_text(json.dumps(record))
    report = verify(folder)
    assert report.ok, report.problems
    assert sorted(report.unchecked_shards) == ["v-000000.tar", "v-000001.tar"] and report.members_checked == 0
    # damage still shows where the old checks see it: a cut JPEG does not decode
    shard = folder / "v-000000.tar"
    name, offset, size = members_of(shard)[0]
    data = bytearray(shard.read_bytes())
    data[offset + 200 : offset + size] = bytes(size - 200)
    shard.write_bytes(bytes(data))
    assert any(name in p and "does not decode" in p for p in verify(folder).problems)


def rewrite_member(tar_path, member, data: bytes):
    """Replace one member's bytes (the tar is rebuilt with the same order and metadata)."""
    out = io.BytesIO()
    with tarfile.open(tar_path) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for info in src:
            body = src.extractfile(info).read()
            if info.name == member:
                body, info.size = data, len(data)
            dst.addfile(info, io.BytesIO(body))
    Path(tar_path).write_bytes(out.getvalue())


def json_variants(info: dict):
    """(label, bytes) of wrong contents for a sample's json member: wrong top-level values, each field
    missing, each field with each wrong type, list fields holding wrong items."""
    for value in WRONG_VALUES:
        if not isinstance(value, dict) or value:
            yield f"top={value!r}", json.dumps(value).encode()
    yield "not json", b"{not json"
    yield "nested a million deep", b"[" * 1_000_000 + b"]" * 1_000_000
    yield "not utf-8", b'{"key": "\xff"}'
    for field in info:
        if field in REQUIRED:
            yield f"no {field}", json.dumps({k: v for k, v in info.items() if k != field}).encode()
        for value in WRONG_VALUES:
            if type(value) is not type(info[field]) and not (
                field in ("duration", "fps")
                and isinstance(value, (int, float, type(None)))
                and not isinstance(value, bool)
            ):
                yield f"{field}={value!r}", json.dumps({**info, field: value}).encode()
    for field in ("captions", "frame_indices", "frame_timestamps"):
        yield f"{field} items", json.dumps({**info, field: [None, {}, "x"][: len(info[field]) or 1]}).encode()


def test_wrong_json_content_is_reported_never_raised(folder):
    shard = folder / "v-000000.tar"
    with tarfile.open(shard) as tar:
        original = json.loads(tar.extractfile("clip0.json").read())
    pristine = shard.read_bytes()
    checked = 0
    for label, data in json_variants(original):
        shard.write_bytes(pristine)
        rewrite_member(shard, "clip0.json", data)
        report = verify(folder)  # must not raise
        about = [p for p in report.problems if "clip0" in p and "json" in p and "is damaged" not in p]
        assert about, (label, report.problems)
        checked += 1
    assert checked > 100


def manifest_variants(manifest: dict):
    for value in WRONG_VALUES:
        if not isinstance(value, dict) or value:
            yield f"manifest={value!r}", json.dumps(value)
    yield "not json", "{"
    yield "nested a million deep", "[" * 1_000_000 + "]" * 1_000_000
    for key in MANIFEST_FIELDS:  # the keys verify reads: each must be present and typed
        yield f"no {key}", json.dumps({k: v for k, v in manifest.items() if k != key})
        for value in WRONG_VALUES:
            if value != manifest[key] and (
                type(value) is not type(manifest[key]) or key in ("shards", "stats", "failed", "format")
            ):
                yield f"{key}={value!r}", json.dumps({**manifest, key: value})
    shard = manifest["shards"][0]
    for key in shard:
        yield (
            f"shard without {key}",
            json.dumps({**manifest, "shards": [{k: v for k, v in shard.items() if k != key}] + manifest["shards"][1:]}),
        )
        for value in WRONG_VALUES:
            if type(value) is not type(shard[key]):
                yield (
                    f"shard {key}={value!r}",
                    json.dumps({**manifest, "shards": [{**shard, key: value}] + manifest["shards"][1:]}),
                )
    for path in ["../v-000000.tar", "/etc/passwd", "sub/v-000000.tar", "", "..", "a" * 300, "a\0b"]:
        yield (
            f"shard path {path!r}",
            json.dumps({**manifest, "shards": [{**shard, "path": path}] + manifest["shards"][1:]}),
        )
    for stats in [[1], ["../x.stats.json"], ["nothere.stats.json"], [None], ["s" * 300], ["a\0b"]]:
        yield f"stats={stats!r}", json.dumps({**manifest, "stats": stats})
    yield "failed counts", json.dumps({**manifest, "failed": {"decode_error": "2"}})


def test_wrong_manifest_content_is_reported_never_raised(folder):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    checked = 0
    for label, text in manifest_variants(manifest):
        path.write_text(text)
        report = verify(folder)  # must not raise
        assert not report.ok, label
        checked += 1
    path.write_bytes(b"\xff\xfe")
    assert not verify(folder).ok
    assert checked > 100


@pytest.mark.parametrize(
    "content",
    [
        "1",
        "null",
        "[]",
        "{",
        '{"shards": 1}',
        '{"shards": [1]}',
        '{"shards": [{"path": "v-000000.tar", "crc32": 5}]}',
        '{"shards": [{"path": "v-000000.tar", "crc32": {"a": 1}}]}',
    ],
)
def test_damaged_stats_record_is_reported_never_raised(folder, content):
    (folder / "v-000000.stats.json").write_text(content)
    report = verify(folder)
    assert any("v-000000.stats.json" in p for p in report.problems), report.problems


def test_the_command_prints_each_damaged_member_and_the_checksum_count(folder, capsys):
    from shard_tools import cli

    assert cli.main(["verify", str(folder)]) == 0
    assert "18 members match their checksums: OK" in capsys.readouterr().out
    name, offset, size = members_of(folder / "v-000001.tar")[-1]  # the last sample's txt
    flip_bit(folder / "v-000001.tar", offset)
    assert cli.main(["verify", str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM v-000001.tar: member {name} is damaged" in out and "17 members match" in out
