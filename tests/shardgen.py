"""Test fixture: write shards in the `fit-shards/1` format (docs/DESIGN.md) directly, without make-shards.

Frames are small JPEGs whose pixels encode (sample number, frame number), so tests can tell from a decoded
batch which stored frame was used: frame i of a sample is a flat image of grey level `frame_level(i)`, with
an optional bright marker column on the left edge so tests can detect horizontal flips.
"""

import io
import json
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import simplejpeg


def frame_level(i: int) -> int:
    """Grey level of stored frame i; levels are 20 apart so JPEG noise never confuses neighbours."""
    return 10 + 20 * i


def make_frame(i: int, height: int, width: int, marker: bool) -> bytes:
    img = np.full((height, width, 3), frame_level(i), np.uint8)
    if marker:  # a white band over the left quarter: after a flip it is on the right
        img[:, : width // 4] = 255
    return simplejpeg.encode_jpeg(img, quality=95, colorsubsampling="444")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def sample_members(
    key: str,
    kind: str,
    num_frames: int,
    captions: list[str] | None,
    *,
    height: int = 48,
    width: int = 64,
    marker: bool = False,
) -> list[tuple[str, bytes]]:
    """The tar members of one sample: K JPEG frames, the primary caption and the metadata json."""
    k = 1 if kind == "image" else num_frames
    members = [(f"{key}.{i:03d}.jpg", make_frame(i, height, width, marker)) for i in range(k)]
    if captions:
        members.append((f"{key}.txt", captions[0].encode()))
    fps = 10.0  # stored frame i is source frame i of a clip at 10 fps
    timing = {"frame_indices": list(range(k)), "frame_timestamps": [i / fps for i in range(k)], "duration": k / fps}
    meta = {"key": key, "kind": kind, "captions": captions or [], "source": None, "num_frames": k, **timing}
    meta |= {"fps": fps, "width": width, "height": height, "extra": {}}
    members.append((f"{key}.json", json.dumps(meta).encode()))
    return members


def write_shards(
    folder,
    name: str = "ds",
    kind: str = "video",
    shard_sizes=(4, 4),
    num_frames: int = 8,
    captions_per_sample: int = 1,
    manifest: bool = True,
    height: int = 48,
    width: int = 64,
    marker: bool = False,
    frame_jpeg: Callable[[int, int, int], bytes] | None = None,
) -> Path:
    """Write len(shard_sizes) shards holding the given numbers of samples; return the folder.

    Keys are `{name}_{shard}_{index}` (no dots); captions are `caption {j} of {key}`.
    `frame_jpeg(shard, index, frame)`, when given, makes each frame's JPEG instead of the grey levels.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for s, size in enumerate(shard_sizes):
        path = folder / f"{name}-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(size):
                key = f"{name}_{s}_{i}"
                caps = [f"caption {j} of {key}" for j in range(captions_per_sample)]
                for member, data in sample_members(
                    key, kind, num_frames, caps, height=height, width=width, marker=marker
                ):
                    if frame_jpeg is not None and member.endswith(".jpg"):
                        data = frame_jpeg(s, i, int(member.split(".")[1]))
                    _add(tar, member, data)
        shards.append({"path": path.name, "samples": size, "bytes": path.stat().st_size})
    if manifest:
        write_manifest(folder, name, kind, num_frames if kind == "video" else 1, shards)
    return folder


def write_manifest(folder, name: str, kind: str, frames_per_sample: int, shards: list[dict]) -> None:
    doc = {
        "format": "fit-shards/1",
        "name": name,
        "kind": kind,
        "frames_per_sample": frames_per_sample,
        "shards": shards,
        "total_samples": sum(s["samples"] for s in shards),
        "input_rows": sum(s["samples"] for s in shards),
        "failed": {},
        "options": {},
        "tool_version": "test",
    }
    (Path(folder) / "manifest.json").write_text(json.dumps(doc, indent=1))


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    """Write an arbitrary list of (member name, bytes) as a tar: for corrupt-data tests."""
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            _add(tar, member, data)
