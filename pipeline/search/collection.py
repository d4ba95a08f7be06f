"""A merged collection folder (docs/SEARCH.md): the vectors, the id -> metadata table and the stored frames.

`pipeline.search.features` writes it (`features.npy` [N, D], `items.jsonl`, `skipped.jsonl`,
`features.json`); the index, the query CLI and the web page read it through `Collection`. Frames are read
straight from the shards by the byte ranges the items record, so nothing is unpacked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from foundation.safeload import DamagedFileError

FEATURES_FILE = "features.npy"
ITEMS_FILE = "items.jsonl"
SKIPPED_FILE = "skipped.jsonl"
INFO_FILE = "features.json"


class FeaturesMissingError(FileNotFoundError):
    """The collection folder has no merged features yet."""


def read_frame(shard: str | Path, byte_range: tuple[int, int]) -> bytes:
    """The bytes of one stored frame; OSError naming the shard when it no longer holds them all."""
    offset, size = byte_range
    with open(shard, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:  # a short read is not a frame: the shard was truncated or replaced after extraction
        raise OSError(
            f"{shard}: the frame at byte {offset} should be {size} bytes but the file holds {len(data)} "
            f"there (shard truncated or replaced after extraction? re-run extract)"
        )
    return data


class Collection:
    """A merged collection folder: vectors, the id -> metadata table and the stored frames."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        info_path = self.folder / INFO_FILE
        if not info_path.is_file():
            raise FeaturesMissingError(
                f"no extracted features in {self.folder} ({INFO_FILE} is missing); "
                f"run `python launch/search.py extract --out {self.folder} ...` first"
            )
        self.info = json.loads(info_path.read_text())
        self.shards_dir = Path(self.info["shards_dir"])
        with open(self.folder / ITEMS_FILE, encoding="utf-8") as f:
            self.items = [json.loads(line) for line in f]

    def vectors(self) -> np.ndarray:
        path = self.folder / FEATURES_FILE
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)  # never a pickle: an object array is refused
        except (ValueError, OSError, EOFError) as err:
            raise DamagedFileError(
                path, f"is not a features array ({type(err).__name__}: {err})", "run extract again into a new folder"
            ) from err

    def __len__(self):
        return len(self.items)

    def frame(self, item_id: int, index: int) -> bytes:
        """JPEG bytes of stored frame `index` of item `item_id` (IndexError when out of range)."""
        item = self.items[item_id]
        if not 0 <= index < len(item["frames"]):
            raise IndexError(f"item {item_id} has {len(item['frames'])} stored frames, not {index + 1}")
        return read_frame(self.shards_dir / item["shard"], item["frames"][index])
