"""Write one chunk of input rows as deterministic WebDataset tar shards.

A chunk is `samples_per_shard` consecutive input rows. Its samples go, in row order, into
`{name}-{chunk:06d}.tar`; when `max_bytes` would be exceeded the chunk continues in
`{name}-{chunk:06d}-p1.tar`, `-p2`, ... Tar members carry fixed metadata (mtime 0, uid/gid 0, no user
names, mode 0444) and a fixed member order, so the same samples always give the same bytes. Files are
written under temporary names and renamed only when the whole chunk is complete; then the chunk's
stats file (its completion marker, with every failure) is written, see shard_tools/records.py. The stats
file also keeps the CRC-32 of every member as written (`crc32`), so `make-shards verify` can name each
damaged member: a JPEG with flipped bits usually still decodes.
"""

import io
import json
import math
import tarfile
from pathlib import Path

from foundation.fsutil import atomic_path
from shard_tools.format import caption_member, frame_member, member_crc32, meta_member, split_member_name


def shard_name(name: str, chunk: int, part: int = 0) -> str:
    return f"{name}-{chunk:06d}.tar" if part == 0 else f"{name}-{chunk:06d}-p{part}.tar"


def _clean_text(value):
    """JSON-safe copy of pass-through values: bytes that were not UTF-8 become U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _clean_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_text(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN / inf (an empty numeric cell of a table) have no JSON form; null says "no value"
    if value is None or isinstance(value, (int, float, bool)):
        return value
    return str(value)


def sample_members(row, row_index: int, decoded) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in their fixed order: frames, json, txt."""
    meta = dict(decoded.meta)
    info = {
        "key": row.key,
        "kind": row.kind,
        "captions": row.captions,
        "source": _clean_text(row.source()),
        "num_frames": len(decoded.jpegs),
        "frame_indices": meta.pop("frame_indices"),
        "frame_timestamps": meta.pop("frame_timestamps"),
        "duration": meta.pop("duration"),
        "fps": meta.pop("fps"),
        "width": meta.pop("width"),
        "height": meta.pop("height"),
        **meta,
        "row": row_index,
        "extra": _clean_text(row.extra),
    }
    members = [(frame_member(row.key, i), jpeg) for i, jpeg in enumerate(decoded.jpegs)]
    members.append((meta_member(row.key), json.dumps(info, ensure_ascii=False, allow_nan=False).encode("utf-8")))
    members.append((caption_member(row.key), row.captions[0].encode("utf-8")))
    return members


def _member_bytes(members) -> int:
    return sum(512 + (len(data) + 511) // 512 * 512 for _, data in members)


class _Part:
    """One tar file being written under a temporary name."""

    def __init__(self, final: Path):
        self.final = final
        self._ctx = atomic_path(final)
        self.tmp = self._ctx.__enter__()
        self._file = open(self.tmp, "wb")
        self.tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self.samples = 0
        self.crc32: dict[str, str] = {}  # member name -> CRC-32 (8 hex digits) of its bytes

    def add(self, members) -> None:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tar.addfile(info, io.BytesIO(data))
            self.crc32[name] = member_crc32(data)
        self.samples += 1

    def size(self) -> int:
        return self._file.tell()

    def commit(self) -> int:
        self.tar.close()
        self._file.close()
        size = self.tmp.stat().st_size
        self._ctx.__exit__(None, None, None)  # fsync + rename to the final name
        return size

    def abort(self) -> None:
        try:
            self.tar.close()
        finally:
            self._file.close()
            self._ctx.__exit__(RuntimeError, RuntimeError("chunk aborted"), None)  # removes the temp


class ChunkWriter:
    """Collects the outcomes of one chunk's rows (in any order) and writes samples in row order."""

    def __init__(self, out_dir: Path, name: str, chunk: int, row_indices: list[int], max_bytes: int | None):
        self.out_dir, self.name, self.chunk = Path(out_dir), name, chunk
        self.order = row_indices
        self.max_bytes = max_bytes
        self.pending: dict[int, tuple] = {}
        self.next = 0
        self.parts: list[_Part] = []
        self.written: list[tuple[int, str]] = []  # (row, key)
        self.failures: list[dict] = []

    @property
    def complete(self) -> bool:
        return self.next == len(self.order)

    def add_sample(self, row_index: int, key: str, members) -> None:
        self.pending[row_index] = ("ok", key, members)
        self._flush()

    def add_failure(self, row_index: int, record: dict) -> None:
        self.pending[row_index] = ("failed", record)
        self._flush()

    def _flush(self) -> None:
        while self.next < len(self.order) and self.order[self.next] in self.pending:
            row_index = self.order[self.next]
            outcome = self.pending.pop(row_index)
            if outcome[0] == "ok":
                self._write(row_index, outcome[1], outcome[2])
            else:
                self.failures.append(outcome[1])
            self.next += 1

    def _write(self, row_index: int, key: str, members) -> None:
        part = self.parts[-1] if self.parts else None
        if part is None or (
            self.max_bytes and part.samples and part.size() + _member_bytes(members) + 1024 > self.max_bytes
        ):
            part = _Part(self.out_dir / shard_name(self.name, self.chunk, len(self.parts)))
            self.parts.append(part)
        part.add(members)
        self.written.append((row_index, key))

    def commit(self) -> list[dict]:
        """Rename every part to its final name; returns [{path, samples, bytes, crc32}] in part order
        (crc32: {member name: CRC-32}; the stats record keeps it, the manifest leaves it out)."""
        assert self.complete, "commit before every row of the chunk has an outcome"
        return [{"path": p.final.name, "samples": p.samples, "bytes": p.commit(), "crc32": p.crc32} for p in self.parts]

    def abort(self) -> None:
        for part in self.parts:
            part.abort()
        self.parts = []


def read_samples(tar_path: Path) -> dict[str, list[tuple[str, bytes]]]:
    """{key: [(member name, bytes), ...]} of a shard, members in stored order (used by --retry-failed
    to carry finished samples over, and by verify)."""
    samples: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(tar_path, "r") as tar:
        for info in tar:
            if not info.isfile():
                raise ValueError(f"{tar_path}: member {info.name!r} is not a regular file")
            key, _ = split_member_name(info.name)
            samples.setdefault(key, []).append((info.name, tar.extractfile(info).read()))
    return samples
