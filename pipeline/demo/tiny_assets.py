"""The assets of configs/tiny_*.json: a tiny random text model and three small shard sets (docs/SLURM.md).

    python3 -m launch.tiny_assets            (= make tiny-assets) writes them under runs/tiny_assets/

`runs/tiny_assets/text_model` (a seeded 1-layer DistilBERT with the bert-base-uncased vocabulary),
`images/` (48 images), `videos/` (48 clips of 8 frames), `val/` (12 clips, two captions each). Frames are
seeded blocky noise drifting sideways over time, so every sample differs and clips differ in time. The
shards are written by make-shards' own chunk writer (deterministic tar members, temp + rename) with a
fit-shards/1 manifest written last, so a folder with a manifest is complete; finished folders are kept.
The tests (tests/test_train_fixtures.make_tiny_assets) use the same assets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import simplejpeg

from models.tiny import write_tiny_text_model
from shard_tools import records
from shard_tools.format import FORMAT, MANIFEST
from shard_tools.writer import ChunkWriter, sample_members

DEFAULT_ROOT = "runs/tiny_assets"
FRAME_SIZE = 40  # pixels; the tiny configs crop 32
STORED_FRAMES = 8  # frames stored per clip (the loader samples 1 or 4 of them)
# name, kind, samples per shard, captions per sample
DATASETS = (
    ("images", "image", (12, 12, 12, 12), 1),
    ("videos", "video", (12, 12, 12, 12), 1),
    ("val", "video", (6, 6), 2),
)


@dataclass
class TinyAssets:
    root: Path

    @property
    def text_model(self) -> Path:
        return self.root / "text_model"

    def shards(self, name: str) -> Path:
        return self.root / name

    def overrides(self) -> list[str]:
        """`--set` overrides that point configs/tiny_*.json at these assets (when they are not in the
        default place)."""
        return [
            f"model.text.model={self.text_model}",
            f"data.options.tokenizer={self.text_model}",
            f"data.train[0].shards={self.shards('images')}",
            f"data.train[1].shards={self.shards('videos')}",
            f"data.eval[0].shards={self.shards('val')}",
        ]


def noise_frame(name: str, shard: int, index: int, frame: int, size: int = FRAME_SIZE) -> bytes:
    """Blocky seeded noise, shifted one block column per frame: samples differ, and clips differ in time."""
    rng = np.random.default_rng([shard, index, len(name)])
    base = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    image = np.roll(base, frame, axis=1).repeat(4, 0).repeat(4, 1)
    return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=95)


def write_noise_shards(
    folder: Path,
    name: str,
    kind: str,
    shard_sizes,
    captions_per_sample: int = 1,
    num_frames: int = STORED_FRAMES,
    size: int = FRAME_SIZE,
) -> Path:
    """fit-shards/1 shards of noise samples, keys `{name}_{shard}_{index}`, captions `caption {j} of {key}`;
    manifest.json last. A folder that already has its manifest is left as it is."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    frames = 1 if kind == "image" else num_frames
    options = {"kind": kind, "frames": frames, "source": "pipeline.demo.tiny_assets (seeded noise)"}
    total, row = sum(shard_sizes), 0
    for s, count in enumerate(shard_sizes):
        writer = ChunkWriter(folder, name, s, list(range(row, row + count)), max_bytes=None)
        for i in range(count):
            key = f"{name}_{s}_{i}"
            sample = SimpleNamespace(
                key=key,
                kind=kind,
                extra={},
                source=lambda: {"generator": "tiny_assets"},
                captions=[f"caption {j} of {key}" for j in range(captions_per_sample)],
            )
            decoded = SimpleNamespace(
                jpegs=[noise_frame(name, s, i, f, size) for f in range(frames)],
                meta={
                    "frame_indices": list(range(frames)),
                    "frame_timestamps": [f / 10 for f in range(frames)],
                    "duration": frames / 10,
                    "fps": 10.0,
                    "width": size,
                    "height": size,
                },
            )
            writer.add_sample(row + i, key, sample_members(sample, row + i, decoded))
        # the same stats record make-shards writes per chunk (member checksums for verify), then its manifest
        records.write_stats(
            folder,
            {
                "format": FORMAT,
                "name": name,
                "chunk": s,
                "num_chunks": len(shard_sizes),
                "input_rows": total,
                "rows": [row, row + count],
                "options": options,
                "shards": writer.commit(),
                "samples": [list(x) for x in writer.written],
                "failures": writer.failures,
            },
        )
        row += count
    manifest, missing = records.finalize(folder, name)
    if manifest is None:
        raise RuntimeError(f"{folder}: tiny shards incomplete (chunks {missing})")
    return folder


def write_tiny_assets(root: str | Path = DEFAULT_ROOT) -> TinyAssets:
    """Write (or keep, when complete) the text model and shards of configs/tiny_*.json under `root`."""
    assets = TinyAssets(Path(root))
    write_tiny_text_model(assets.text_model, arch="distilbert", hidden=32, layers=1, heads=2)
    for name, kind, sizes, captions in DATASETS:
        write_noise_shards(assets.shards(name), name, kind, sizes, captions_per_sample=captions)
    return assets
