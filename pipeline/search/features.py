"""Video/image embeddings for every sample of a shard folder, resumable, on any number of ranks.

Output folder (a "collection", docs/SEARCH.md):

- `parts/{shard}.npz`: one file per shard, written atomically when the shard is done: `embeddings`
  [n, D] (L2-normalised, float16 or float32) and `rows` (the JSON list of the n metadata rows, plus the
  samples that were skipped, with their reason). A re-run skips every shard whose part exists, so a killed
  job loses at most one shard per rank. (The original flushed unnumbered parts every 1e4 samples and its
  part numbering crashed on resume, docs/ORIGINAL.md, 'Bugs' 11.)
- after the last part, `features.npy` [N, D], `items.jsonl` (row i describes vector i: `id`, `key`,
  `kind`, `caption`, `captions`, `source`, and where its stored frames are: `shard` + byte ranges
  `frames` inside the tar, so the web page serves thumbnails without unpacking anything),
  `skipped.jsonl` and `features.json` (model, sizes, counts).

Shards are dealt round-robin to ranks (shard i -> rank i % world_size); rank 0 waits for every part and
writes the merged files. Frames are picked and transformed exactly as the evaluation loader does
(`pipeline.data.frames`, `pipeline.search.inference.Preprocess`), but the shard is read here by byte range because
the table must say where each frame lives.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from foundation.fsutil import atomic_path, atomic_write_json, atomic_write_text
from foundation.safeload import DamagedFileError
from pipeline.data.frames import decode_frames, frame_indices
from pipeline.search.collection import FEATURES_FILE, INFO_FILE, ITEMS_FILE, SKIPPED_FILE
from shard_tools.format import CAPTION_SUFFIX, MANIFEST, META_SUFFIX, frame_index, read_manifest, split_member_name

log = logging.getLogger(__name__)

PARTS_DIR = "parts"
DTYPES = ("float16", "float32")


# ----------------------------------------------------------------------------------------------- shards


@dataclass
class SampleRef:
    """One sample of a shard: its key, metadata and the byte range of each stored frame inside the tar."""

    key: str
    meta: dict = field(default_factory=dict)
    caption: str | None = None
    frames: list[tuple[int, int]] = field(default_factory=list)  # (offset, size) of {key}.{i:03d}.jpg


def scan_shard(path: str | Path) -> tuple[list[SampleRef], list[dict]]:
    """Index a shard's members without extracting anything: (samples in tar order, problems found)."""
    samples: dict[str, SampleRef] = {}
    frames: dict[str, dict[int, tuple[int, int]]] = {}
    problems = []
    try:
        _scan_members(path, samples, frames, problems)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(
            f"shard {path} is unreadable ({type(e).__name__}: {e}); check it with "
            f"`make-shards verify` and re-make it, then re-run extract (finished shards are kept)"
        ) from e
    out = []
    for key, ref in samples.items():
        stored = frames.get(key, {})
        expected = ref.meta.get("num_frames") or len(stored)
        if not stored or sorted(stored) != list(range(expected)):
            problems.append(
                {
                    "key": key,
                    "shard": str(path),
                    "reason": "missing_frames",
                    "detail": f"stored frame numbers {sorted(stored)}, its json says {expected} frames",
                }
            )
            continue
        ref.frames = [stored[i] for i in range(len(stored))]
        out.append(ref)
    return out, problems


def _scan_members(path, samples: dict, frames: dict, problems: list) -> None:
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, suffix = split_member_name(member.name)
            ref = samples.setdefault(key, SampleRef(key))
            if suffix in (META_SUFFIX, CAPTION_SUFFIX):
                data = tar.extractfile(member).read().decode("utf-8", errors="replace")
                if suffix == META_SUFFIX:
                    try:
                        ref.meta = json.loads(data)
                    except json.JSONDecodeError as e:
                        problems.append({"key": key, "shard": str(path), "reason": "bad_json", "detail": str(e)})
                else:
                    ref.caption = data
            elif (index := frame_index(suffix)) is not None:
                frames.setdefault(key, {})[index] = (member.offset_data, member.size)


class _ShardClips:
    """Map-style dataset: sample i -> (i, uint8 clip [T, 3, res, res] or None, failure reason or None)."""

    def __init__(self, shard: Path, samples: list[SampleRef], prep):
        self.shard, self.samples, self.prep = shard, samples, prep  # prep: pipeline.search.inference.Preprocess

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        ref = self.samples[i]
        try:
            # decode only the T frames the model sees, picked as the evaluation loader picks them
            picked = frame_indices(len(ref.frames), self.prep.num_frames, "uniform")
            with open(self.shard, "rb") as f:
                jpegs = []
                for j in picked:
                    f.seek(ref.frames[j][0])
                    jpegs.append(f.read(ref.frames[j][1]))
            return i, self.prep.clip(decode_frames(jpegs)), None
        except (ValueError, OSError) as e:
            return i, None, f"{type(e).__name__}: {e}"


def _collate(items):
    return items


# ----------------------------------------------------------------------------------------------- extract


def part_path(out_dir: Path, shard_name: str) -> Path:
    return Path(out_dir) / PARTS_DIR / (Path(shard_name).stem + ".npz")


def extract_features(
    embedder,
    shards_dir: str | Path,
    out_dir: str | Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 16,
    num_workers: int = 2,
    dtype: str = "float16",
    progress: bool = True,
) -> dict:
    """Embed this rank's unfinished shards of `shards_dir` into `out_dir/parts/`; return counts.

    `embedder` is a `pipeline.search.inference.Embedder` (its `prep` decides T frames, crop and input size).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
    shards_dir, out_dir = Path(shards_dir), Path(out_dir)
    manifest = read_manifest(shards_dir / MANIFEST)
    mine = [s for i, s in enumerate(manifest["shards"]) if i % world_size == rank]
    todo = [s for s in mine if not part_path(out_dir, s["path"]).exists()]
    log.info(
        "rank %d/%d: %d of my %d shards to embed (%d already done)",
        rank,
        world_size,
        len(todo),
        len(mine),
        len(mine) - len(todo),
    )
    prep = embedder.prep
    if manifest.get("kind") == "image":  # images are one-frame samples, as in training
        prep = dataclasses.replace(prep, num_frames=1)
    counts = {"shards": 0, "embedded": 0, "skipped": 0}
    start = time.perf_counter()
    bar = tqdm(
        total=sum(s["samples"] for s in todo),
        unit="clip",
        disable=not progress,
        position=rank,
        desc=f"extract rank {rank}",
        dynamic_ncols=True,
    )
    for shard in todo:
        path = shards_dir / shard["path"]
        samples, skipped = scan_shard(path)
        found = len({r.key for r in samples} | {p["key"] for p in skipped})
        if found != shard["samples"]:
            # tarfile ends quietly at the first bad header, so a damaged shard shows up as missing samples
            raise ValueError(
                f"shard {path} holds {found} samples but the manifest says {shard['samples']}: "
                f"it is truncated or corrupt; check it with `make-shards verify` and re-make it, "
                f"then re-run extract (finished shards are kept)"
            )
        for problem in skipped:
            problem["shard"] = shard["path"]
        loader = torch.utils.data.DataLoader(
            _ShardClips(path, samples, prep), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
        )
        vectors, rows = [], []
        for batch in loader:
            good = [(i, clip) for i, clip, err in batch if err is None]
            for i, _, err in batch:
                if err is not None:
                    skipped.append(
                        {"key": samples[i].key, "shard": shard["path"], "reason": "bad_frames", "detail": err}
                    )
            if good:
                vectors.append(embedder.embed_clips(torch.stack([clip for _, clip in good])))
                rows.extend(_row(samples[i], shard["path"]) for i, _ in good)
            bar.update(len(batch))
        bar.set_postfix(clips_per_s=f"{bar.n / (time.perf_counter() - start):.1f}")
        embeddings = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), np.float32)
        _write_part(part_path(out_dir, shard["path"]), embeddings.astype(dtype), rows, skipped)
        counts["shards"] += 1
        counts["embedded"] += len(rows)
        counts["skipped"] += len(skipped)
        for problem in skipped:
            log.warning(
                "skipped sample %s in %s: %s (%s)",
                problem["key"],
                shard["path"],
                problem["reason"],
                problem.get("detail", ""),
            )
    bar.close()
    return counts


def _row(ref: SampleRef, shard_name: str) -> dict:
    meta = ref.meta
    captions = meta.get("captions") or ([ref.caption] if ref.caption else [])
    return {
        "key": ref.key,
        "kind": meta.get("kind", "video"),
        "caption": ref.caption if ref.caption is not None else (captions[0] if captions else None),
        "captions": captions,
        "source": meta.get("source"),
        "duration": meta.get("duration"),
        "extra": meta.get("extra") or {},
        "shard": shard_name,
        "frames": [list(r) for r in ref.frames],
    }


def _write_part(path: Path, embeddings: np.ndarray, rows: list[dict], skipped: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, embeddings=embeddings, rows=np.array(json.dumps(rows)), skipped=np.array(json.dumps(skipped)))


def _read_part(path: Path) -> tuple[np.ndarray, list[dict], list[dict]]:
    try:
        with np.load(path, allow_pickle=False) as part:  # never a pickle: an object array is refused
            return part["embeddings"], json.loads(str(part["rows"])), json.loads(str(part["skipped"]))
    except (ValueError, OSError, KeyError, EOFError) as err:  # incl. a refused pickle, a damaged zip or JSON
        raise DamagedFileError(
            path,
            f"is not a features part ({type(err).__name__}: {err})",
            "delete it and run extract again to redo that shard",
        ) from err


# ----------------------------------------------------------------------------------------------- merge


def pending_parts(shards_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Shards of the manifest whose part file does not exist yet."""
    return [
        s["path"]
        for s in read_manifest(Path(shards_dir) / MANIFEST)["shards"]
        if not part_path(out_dir, s["path"]).exists()
    ]


def wait_for_parts(shards_dir, out_dir, timeout_s: float = 24 * 3600, poll_s: float = 5.0) -> None:
    """Block until every shard has its part (other ranks finishing); raise after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while pending := pending_parts(shards_dir, out_dir):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(pending)} shards still have no part in {out_dir}/{PARTS_DIR} after "
                f"{timeout_s:.0f} s (first: {pending[0]}); re-run extract to finish them"
            )
        time.sleep(poll_s)


def merge_parts(shards_dir: str | Path, out_dir: str | Path, model_info: dict) -> dict:
    """Concatenate the parts in manifest order into the collection files; return the info written."""
    shards_dir, out_dir = Path(shards_dir), Path(out_dir)
    manifest = read_manifest(shards_dir / MANIFEST)
    missing = pending_parts(shards_dir, out_dir)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} shards have no part in {out_dir / PARTS_DIR} "
            f"(first: {missing[0]}); run extract again to finish them"
        )
    arrays, rows, skipped = [], [], []
    for shard in manifest["shards"]:
        emb, part_rows, part_skipped = _read_part(part_path(out_dir, shard["path"]))
        arrays.append(emb)
        rows.extend(part_rows)
        skipped.extend(part_skipped)
    features = np.concatenate(arrays)
    for i, row in enumerate(rows):
        row["id"] = i
    with atomic_path(out_dir / FEATURES_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, features)
    atomic_write_text(out_dir / ITEMS_FILE, "".join(json.dumps({"id": r.pop("id"), **r}) + "\n" for r in rows))
    atomic_write_text(out_dir / SKIPPED_FILE, "".join(json.dumps(s) + "\n" for s in skipped))
    reasons: dict[str, int] = {}
    for s in skipped:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    info = {
        "count": len(rows),
        "dim": int(features.shape[1]),
        "dtype": str(features.dtype),
        "normalized": True,
        "shards_dir": str(shards_dir.resolve()),
        "dataset": manifest.get("name"),
        "skipped": reasons,
        "model": model_info,
    }
    atomic_write_json(out_dir / INFO_FILE, info)
    log.info(
        "merged %d parts: %d vectors of %d dims (%s), %d samples skipped %s",
        len(manifest["shards"]),
        len(rows),
        info["dim"],
        info["dtype"],
        len(skipped),
        reasons or "",
    )
    return info
