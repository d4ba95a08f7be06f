"""`make-shards verify DIR`: read every shard, decode every frame, check everything against the manifest."""
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import simplejpeg
from tqdm import tqdm

from shard_tools import FORMAT
from shard_tools.records import MANIFEST

REQUIRED = ("key", "kind", "captions", "source", "num_frames", "frame_indices", "frame_timestamps",
            "duration", "fps", "width", "height", "extra")


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    frames: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(out_dir, progress: bool = False) -> VerifyReport:
    out_dir = Path(out_dir)
    report = VerifyReport()
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        report.problems.append(f"{manifest_path} is missing: the run is unfinished (or run "
                               f"`make-shards manifest {out_dir}` after all array tasks ended)")
        return report
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        report.problems.append(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        return report
    frames = manifest["frames_per_sample"]
    keys: set[str] = set()
    listed = set()
    for shard in tqdm(manifest["shards"], unit="shard", disable=not progress):
        listed.add(shard["path"])
        _verify_shard(out_dir / shard["path"], shard, frames, keys, report)
    total = manifest["total_samples"]
    if report.samples != total:
        report.problems.append(f"manifest says total_samples {total}, the shards hold {report.samples}")
    failed = sum(manifest["failed"].values())
    if total + failed != manifest["input_rows"]:
        report.problems.append(f"manifest: total_samples {total} + failed {failed} != input_rows "
                               f"{manifest['input_rows']}")
    for stats in manifest.get("stats", []):
        if not (out_dir / stats).is_file():
            report.problems.append(f"{stats}: failure record listed in the manifest is missing")
    for tar_path in sorted(out_dir.glob("*.tar")):
        if tar_path.name not in listed:
            report.problems.append(f"{tar_path.name}: tar file not listed in the manifest")
    return report


def _verify_shard(path: Path, shard: dict, frames: int, keys: set, report: VerifyReport) -> None:
    name = path.name
    if not path.is_file():
        report.problems.append(f"{name}: listed in the manifest but missing")
        return
    if path.stat().st_size != shard["bytes"]:
        report.problems.append(f"{name}: {path.stat().st_size} bytes, manifest says {shard['bytes']}")
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, "r") as tar:
            for info in tar:
                if not info.isfile() or info.name.startswith("/") or "/" in info.name or ".." in info.name:
                    report.problems.append(f"{name}: unsafe or non-file member {info.name!r}")
                    continue
                key, _, suffix = info.name.partition(".")
                samples.setdefault(key, {})[suffix] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        report.problems.append(f"{name}: unreadable tar ({type(e).__name__}: {e})")
        return
    report.shards += 1
    if len(samples) != shard["samples"]:
        report.problems.append(f"{name}: {len(samples)} samples, manifest says {shard['samples']}")
    for key, members in samples.items():
        report.samples += 1
        where = f"{name}:{key}"
        if key in keys:
            report.problems.append(f"{where}: key appears more than once in the dataset")
        keys.add(key)
        _verify_sample(where, key, members, frames, report)


def _verify_sample(where: str, key: str, members: dict, frames: int, report: VerifyReport) -> None:
    expected = {f"{i:03d}.jpg" for i in range(frames)} | {"json", "txt"}
    if set(members) != expected:
        report.problems.append(f"{where}: members {sorted(members)}, expected {sorted(expected)}")
        return
    for i in range(frames):
        try:
            simplejpeg.decode_jpeg(members[f"{i:03d}.jpg"])
            report.frames += 1
        except ValueError as e:
            report.problems.append(f"{where}: frame {i} does not decode ({e})")
    try:
        info = json.loads(members["json"].decode("utf-8"))
        text = members["txt"].decode("utf-8")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        report.problems.append(f"{where}: bad json/txt ({e})")
        return
    missing = [k for k in REQUIRED if k not in info]
    if missing:
        report.problems.append(f"{where}: json lacks {', '.join(missing)}")
        return
    if info["key"] != key:
        report.problems.append(f"{where}: json key {info['key']!r} differs from the member key")
    if info["num_frames"] != frames or len(info["frame_indices"]) != frames \
            or len(info["frame_timestamps"]) != frames:
        report.problems.append(f"{where}: json frame fields do not describe {frames} frames")
    if not info["captions"] or info["captions"][0] != text:
        report.problems.append(f"{where}: txt is not the first json caption")
