"""Fixtures shared by the search tests (test_search.py, test_search_web.py): a tiny random model saved as
our portable weights folder, a shard folder whose samples look different from one another, and the
collection (features + index) made from it. Also the trained-demo hook of the "done when" test."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import torch

from shardgen import sample_members, write_manifest, write_tar

# a caption that must come out as text on the page, never as markup
EVIL_CAPTION = '<script>alert("pwned")</script> & <img src=x onerror=alert(1)> "quoted"'
SHARD_SIZES = (4, 3, 3)
CORRUPT_KEY = "clip_1_2"  # its third stored frame is not a JPEG: the sample must be skipped and recorded
EVIL_KEY = "clip_0_1"


def frame_jpeg(rng: np.random.Generator, size=(48, 64)) -> bytes:
    """A frame of coloured blocks: every sample looks different, so embeddings differ."""
    blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = np.kron(blocks, np.ones((size[0] // 6, size[1] // 8, 1), np.uint8))
    return simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=90, colorsubsampling="420")


def write_search_shards(folder: Path, sizes=SHARD_SIZES, frames: int = 8, seed: int = 0) -> Path:
    """Shards in the fit-shards/1 format with random-block frames, a source path, the evil caption on
    EVIL_KEY and a corrupt frame in CORRUPT_KEY."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for s, size in enumerate(sizes):
        members = []
        for i in range(size):
            key = f"clip_{s}_{i}"
            caption = EVIL_CAPTION if key == EVIL_KEY else f"clip {s} {i} with coloured blocks"
            for name, data in sample_members(key, "video", frames, [caption]):
                if name.endswith(".jpg"):
                    data = frame_jpeg(rng)
                    if key == CORRUPT_KEY and name.endswith(".002.jpg"):
                        data = b"\xff\xd8 this is not a jpeg"
                elif name.endswith(".json"):
                    meta = json.loads(data)
                    meta["source"] = {"id": key, "path": f"/videos/{key}.mp4", "url": None}
                    data = json.dumps(meta).encode()
                members.append((name, data))
        path = folder / f"search-{s:06d}.tar"
        write_tar(path, members)
        shards.append({"path": path.name, "samples": size, "bytes": path.stat().st_size})
    write_manifest(folder, "search", "video", frames, shards)
    return folder


def tar_member(shard: Path, name: str) -> bytes:
    with tarfile.open(shard) as tar:
        return tar.extractfile(name).read()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny randomly initialised FrozenInTime saved as our portable weights folder (seeded)."""
    from models import FrozenInTime, TextConfig, preset, save_pretrained
    from models.tiny import write_tiny_text_model

    root = tmp_path_factory.mktemp("tiny_model")
    cfg = preset("tiny")
    cfg.text = TextConfig(model=str(write_tiny_text_model(root / "text")), pretrained=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FrozenInTime(cfg)
    return save_pretrained(model, cfg, root / "weights")


@pytest.fixture(scope="session")
def embedder(tiny_weights):
    from pipeline.search.inference import Embedder

    return Embedder.load(tiny_weights, device="cpu")


@pytest.fixture(scope="session")
def search_shards(tmp_path_factory) -> Path:
    return write_search_shards(tmp_path_factory.mktemp("search") / "shards")


@pytest.fixture(scope="session")
def collection(tmp_path_factory, embedder, search_shards, tiny_weights) -> Path:
    """Features (float32) + exact index of `search_shards`, made in one uninterrupted run."""
    from pipeline.search.features import extract_features, merge_parts
    from pipeline.search.index import build_collection_index

    out = tmp_path_factory.mktemp("collection")
    extract_features(embedder, search_shards, out, batch_size=4, num_workers=0, dtype="float32", progress=False)
    merge_parts(search_shards, out, {"path": str(tiny_weights)})
    build_collection_index(out)
    return out
