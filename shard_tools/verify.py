"""`make-shards verify DIR`: read every shard, decode every frame, check everything against the manifest.

Whatever the folder holds (a JSON member replaced by `1` or `null`, a manifest or stats record missing a
key or holding a value of the wrong type, a truncated tar, flipped bits), verify reports it as a problem
naming the file, the sample and the member; it never raises on the folder's content.

Each member's bytes are checked against the CRC-32 recorded when it was written (in the chunk's stats
record), so every damaged member is named, also the JPEGs that still decode after bit flips. Shards
written before checksums were recorded (stats shards without `crc32`) still verify: their frames are
decoded and their json checked, and the report counts them in `unchecked_shards`.
"""

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import simplejpeg
from tqdm import tqdm

from shard_tools.format import (
    CAPTION_SUFFIX,
    MANIFEST,
    META_SUFFIX,
    ManifestError,
    frame_index,
    frame_member,
    frame_suffix,
    member_crc32,
    meta_member,
    read_manifest,
    split_member_name,
)
from shard_tools.records import SHARD_FIELDS, json_is, shape_problems

# json fields every sample holds, with the types they must have
_NUMBER = (int, float)
_OPTIONAL_NUMBER = (int, float, type(None))
# fmt: off
SAMPLE_FIELDS = {"key": str, "kind": str, "captions": list, "source": dict, "num_frames": int, "frame_indices": list,
                 "frame_timestamps": list, "duration": _OPTIONAL_NUMBER, "fps": _OPTIONAL_NUMBER, "width": int,
                 "height": int, "extra": dict}
# fmt: on
REQUIRED = tuple(SAMPLE_FIELDS)
# fields of newer shards, type-checked where present (older shards lack them)
OPTIONAL_SAMPLE_FIELDS = {"rotation": int, "num_source_frames": int, "row": int}
# fmt: off
MANIFEST_FIELDS = {"format": str, "name": str, "kind": str, "frames_per_sample": int, "shards": list,
                   "total_samples": int, "input_rows": int, "failed": dict, "options": dict, "tool_version": str,
                   "stats": list}
# fmt: on


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    frames: int = 0
    members_checked: int = 0  # members whose bytes matched their recorded CRC-32
    unchecked_shards: list[str] = field(default_factory=list)  # written before checksums were recorded
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


_UNREADABLE = object()


def _read_json(path: Path, report: VerifyReport):
    """The parsed file, or _UNREADABLE with a problem recorded."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        report.problems.append(f"{path.name}: missing")
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        report.problems.append(f"{path.name}: unreadable ({type(e).__name__}: {e})")
    return _UNREADABLE


def _plain_name(name, out_dir: Path) -> bool:
    """A file name inside out_dir: no folders, no '..', no absolute path (a manifest cannot point outside),
    nothing the file system refuses outright (NUL, over 255 bytes)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and len(name.encode("utf-8", "surrogateescape")) <= 255
        and (out_dir / name).parent == out_dir
    )


def verify(out_dir, progress: bool = False) -> VerifyReport:
    out_dir = Path(out_dir)
    report = VerifyReport()
    try:
        manifest = read_manifest(out_dir / MANIFEST)
    except ManifestError as err:  # missing (an unfinished run), not JSON, not an object, another format
        report.problems.append(str(err))
        return report
    report.problems.extend(shape_problems(manifest, MANIFEST_FIELDS, MANIFEST))
    frames = manifest.get("frames_per_sample")
    if not json_is(frames, int) or frames < 1:
        if json_is(frames, int):  # a missing or non-integer value is already reported above
            report.problems.append(f"{MANIFEST}: frames_per_sample {frames} is not a positive integer")
        frames = None  # samples are still read; their frame count is not checked
    shards = manifest.get("shards") if isinstance(manifest.get("shards"), list) else []
    stats = manifest.get("stats") if isinstance(manifest.get("stats"), list) else []
    recorded = _recorded_shards(out_dir, stats, report)

    keys: set[str] = set()
    listed = set()
    for i, shard in enumerate(tqdm(shards, unit="shard", disable=not progress)):
        problems = shape_problems(shard, SHARD_FIELDS, f"{MANIFEST} shards[{i}]")
        if not problems and not _plain_name(shard["path"], out_dir):
            problems.append(f"{MANIFEST} shards[{i}]: path {shard['path']!r} is not a file name in {out_dir}")
        if problems:
            report.problems.extend(problems)
            continue
        listed.add(shard["path"])
        if shard["path"] not in recorded:
            report.problems.append(
                f"{shard['path']}: in no stats record the manifest lists (the manifest or "
                f"the stats records are damaged)"
            )
        _verify_shard(out_dir / shard["path"], shard, frames, recorded.get(shard["path"]), keys, report)

    total, rows, failed = manifest.get("total_samples"), manifest.get("input_rows"), manifest.get("failed")
    if json_is(total, int) and report.samples != total:
        report.problems.append(f"manifest says total_samples {total}, the shards hold {report.samples}")
    if isinstance(failed, dict):
        bad = {k: v for k, v in failed.items() if not json_is(v, int)}
        if bad:
            report.problems.append(f"{MANIFEST}: failed counts that are not integers: {bad}")
        elif json_is(total, int) and json_is(rows, int) and total + sum(failed.values()) != rows:
            report.problems.append(
                f"manifest: total_samples {total} + failed {sum(failed.values())} != input_rows {rows}"
            )
    for tar_path in sorted(out_dir.glob("*.tar")):
        if tar_path.name not in listed:
            report.problems.append(f"{tar_path.name}: tar file not listed in the manifest")
    return report


def _recorded_shards(out_dir: Path, stats: list, report: VerifyReport) -> dict[str, dict | None]:
    """{shard path: {member name: crc32}, or None for a shard recorded before checksums} from the stats
    records the manifest lists. A record that is missing or damaged is a problem."""
    checksums: dict[str, dict | None] = {}
    for i, name in enumerate(stats):
        if not _plain_name(name, out_dir):
            report.problems.append(f"{MANIFEST} stats[{i}]: {name!r} is not a file name in {out_dir}")
            continue
        if not (out_dir / name).is_file():
            report.problems.append(f"{name}: failure record listed in the manifest is missing")
            continue
        record = _read_json(out_dir / name, report)
        if record is _UNREADABLE:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("shards"), list):
            report.problems.append(f"{name}: holds no list of shards (damaged stats record)")
            continue
        for j, shard in enumerate(record["shards"]):
            if not isinstance(shard, dict) or not isinstance(shard.get("path"), str):
                report.problems.append(f"{name}: shards[{j}] is not a shard entry")
            elif "crc32" not in shard:
                checksums[shard["path"]] = None
            else:
                crc = shard["crc32"]
                if isinstance(crc, dict) and all(isinstance(v, str) for v in crc.values()):
                    checksums[shard["path"]] = crc
                else:
                    report.problems.append(f"{name}: shards[{j}].crc32 is not a {{member: checksum}} object")
    return checksums


def _verify_shard(path: Path, shard: dict, frames, crc32: dict | None, keys: set, report: VerifyReport) -> None:
    name = path.name
    if not path.is_file():
        report.problems.append(f"{name}: listed in the manifest but missing")
        return
    if path.stat().st_size != shard["bytes"]:
        report.problems.append(f"{name}: {path.stat().st_size} bytes, manifest says {shard['bytes']}")
    samples: dict[str, dict[str, bytes]] = {}
    seen_members: set[str] = set()
    try:
        with tarfile.open(path, "r") as tar:
            for info in tar:
                if not info.isfile() or info.name.startswith("/") or "/" in info.name or ".." in info.name:
                    report.problems.append(f"{name}: unsafe or non-file member {info.name!r}")
                    continue
                data = tar.extractfile(info).read()
                if info.name in seen_members:
                    report.problems.append(f"{name}: member {info.name} appears more than once")
                seen_members.add(info.name)
                _check_crc(name, info.name, data, crc32, report)
                key, suffix = split_member_name(info.name)
                samples.setdefault(key, {})[suffix] = data
    except (tarfile.TarError, OSError, EOFError) as e:
        report.problems.append(f"{name}: unreadable tar ({type(e).__name__}: {e})")
        return
    report.shards += 1
    if crc32 is None:
        report.unchecked_shards.append(name)
    else:
        for member in sorted(set(crc32) - seen_members):
            report.problems.append(f"{name}: member {member} was written but is not in the tar")
    if len(samples) != shard["samples"]:
        report.problems.append(f"{name}: {len(samples)} samples, manifest says {shard['samples']}")
    for key, members in samples.items():
        report.samples += 1
        where = f"{name}:{key}"
        if key in keys:
            report.problems.append(f"{where}: key appears more than once in the dataset")
        keys.add(key)
        _verify_sample(where, key, members, frames, report)


def _check_crc(shard: str, member: str, data: bytes, crc32: dict | None, report: VerifyReport) -> None:
    if crc32 is None:
        return
    recorded = crc32.get(member)
    if recorded is None:
        report.problems.append(f"{shard}: member {member} has no recorded checksum (not written by this run)")
        return
    found = member_crc32(data)
    if found != recorded:
        report.problems.append(f"{shard}: member {member} is damaged (CRC-32 {found}, written as {recorded})")
    else:
        report.members_checked += 1


def _verify_sample(where: str, key: str, members: dict, frames, report: VerifyReport) -> None:
    stored = frames if frames is not None else sum(1 for m in members if frame_index(m) is not None)
    expected = {frame_suffix(i) for i in range(stored)} | {META_SUFFIX, CAPTION_SUFFIX}
    if set(members) != expected:
        report.problems.append(f"{where}: members {sorted(members)}, expected {sorted(expected)}")
    for i in range(stored):
        data = members.get(frame_suffix(i))
        if data is None:
            continue
        try:
            simplejpeg.decode_jpeg(data, strict=True)
            report.frames += 1
        except ValueError as e:
            report.problems.append(f"{where}: frame {i} does not decode ({frame_member(key, i)}: {e})")
    if META_SUFFIX not in members or CAPTION_SUFFIX not in members:
        return
    try:
        info = json.loads(members[META_SUFFIX].decode("utf-8"))
        text = members[CAPTION_SUFFIX].decode("utf-8")
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        report.problems.append(f"{where}: bad json/txt ({type(e).__name__}: {e})")
        return
    shape = shape_problems(info, SAMPLE_FIELDS, f"{where}: {meta_member(key)}", OPTIONAL_SAMPLE_FIELDS)
    if shape:
        report.problems.extend(shape)
        return
    if info["key"] != key:
        report.problems.append(f"{where}: json key {info['key']!r} differs from the member key")
    if info["num_frames"] != stored or len(info["frame_indices"]) != stored or len(info["frame_timestamps"]) != stored:
        report.problems.append(f"{where}: json frame fields do not describe {stored} frames")
    if not all(json_is(i, int) for i in info["frame_indices"]) or not all(
        json_is(t, _NUMBER) for t in info["frame_timestamps"]
    ):
        report.problems.append(f"{where}: json frame_indices / frame_timestamps hold non-numbers")
    if not info["captions"] or not all(isinstance(c, str) for c in info["captions"]):
        report.problems.append(f"{where}: json captions is not a non-empty list of texts")
    elif info["captions"][0] != text:
        report.problems.append(f"{where}: txt is not the first json caption")
