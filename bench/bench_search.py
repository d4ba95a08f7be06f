"""Search benchmark (issue 8): extraction throughput, index build time / query latency by size, IVF recall.

1. extraction: `pipeline.search.features.extract_features` over fit-shards/1 shards of random-block clips
   (K=8 stored JPEG frames, short side 256 as make-shards stores them), for the tiny config (32 px,
   T=4) and the ViT-B/16 config (224 px, T=4), random weights. Clips/s, wall clock, end to end
   (tar read, JPEG decode, eval crop, forward, part writing).
2. scaling: flat (exact) and IVF indexes (default nlist/nprobe, trained on the vectors themselves) over
   random unit vectors, 256-d: build seconds, ms per single query (mean over queries sent one at a
   time), and recall@10 of IVF against exact. Random vectors have no cluster structure, the worst case
   for IVF recall; the scaling of time is what they measure.
3. recall: IVF at default settings against exact search on REAL features, i.e. vectors a model
   produced from clips: the tiny model's features of part 1 (random weights), and any collections given
   with --collection (e.g. a trained demo model's test-clip features).

    python bench/bench_search.py                       # everything (~8 min on 2 shared cores)
    python bench/bench_search.py --sizes 10000 --vitb-clips 0 --clips 500

Prints one JSON line per measurement (docs/bench/search.md collects them).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def emit(record: dict) -> dict:
    print(json.dumps(record), flush=True)
    return record


def emit_machine(**facts) -> dict:
    """A `machine` record: the load as `uptime` reports it now, and `facts` (a bench emits one first and last)."""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return emit({"bench": "machine", "uptime": uptime, **facts})


# ------------------------------------------------------------------------------------------ extraction


def write_clips(
    folder: Path, clips: int, per_shard: int, frames: int = 8, height: int = 256, width: int = 320, seed: int = 0
) -> Path:
    """Shards of clips whose frames are random coloured blocks drifting over time (every clip differs)."""
    import simplejpeg

    from shardgen import sample_members, write_manifest, write_tar

    rng = np.random.default_rng(seed)
    shards, done = [], 0
    while done < clips:
        members = []
        n = min(per_shard, clips - done)
        for i in range(done, done + n):
            key = f"bench_{i:07d}"
            blocks = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
            for name, data in sample_members(key, "video", frames, [f"clip {i}"], height=height, width=width):
                if name.endswith(".jpg"):
                    shift = int(name.split(".")[1])
                    img = np.roll(blocks, shift, axis=1).repeat(height // 8, 0).repeat(width // 10, 1)
                    data = simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=90)
                members.append((name, data))
        path = folder / f"bench-{len(shards):06d}.tar"
        folder.mkdir(parents=True, exist_ok=True)
        write_tar(path, members)
        shards.append({"path": path.name, "samples": n, "bytes": path.stat().st_size})
        done += n
    write_manifest(folder, "bench", "video", frames, shards)
    return folder


def make_embedder(preset_name: str, text_dir: Path):
    from models import FrozenInTime, TextConfig, preset
    from models.tiny import write_tiny_text_model
    from pipeline.search.inference import Embedder

    cfg = preset(preset_name)
    cfg.video.init = "none"  # random weights: throughput does not depend on them, and nothing is downloaded
    cfg.text = TextConfig(model=str(write_tiny_text_model(text_dir)), pretrained=True)
    torch.manual_seed(0)
    return Embedder(FrozenInTime(cfg), device="cpu")


def bench_extraction(name: str, embedder, shards: Path, out: Path, batch_size: int, workers: int) -> dict:
    from pipeline.search.features import extract_features, merge_parts

    start = time.perf_counter()
    counts = extract_features(
        embedder, shards, out, batch_size=batch_size, num_workers=workers, dtype="float16", progress=False
    )
    seconds = time.perf_counter() - start
    merge_parts(shards, out, {"path": name})
    return emit(
        {
            "bench": "extract",
            "config": name,
            "clips": counts["embedded"],
            "seconds": round(seconds, 2),
            "clips_per_s": round(counts["embedded"] / seconds, 2),
            "batch_size": batch_size,
            "workers": workers,
            "torch_threads": torch.get_num_threads(),
            "frames": embedder.num_frames,
            "res": embedder.prep.options.input_res,
        }
    )


# ------------------------------------------------------------------------------------------ indexes


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    from pipeline.search.index import normalize

    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in blocks: keeps peak memory at the array itself
        out[start : start + 100_000] = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
    return normalize(out)


def query_latency_ms(index, queries: np.ndarray) -> float:
    from pipeline.search.index import search

    search(index, queries[:2], 10)  # warm-up
    start = time.perf_counter()
    for q in queries:
        search(index, q[None], 10)
    return 1000 * (time.perf_counter() - start) / len(queries)


def bench_scaling(n: int, dim: int, queries: int) -> list[dict]:
    from pipeline.search.index import build_index, recall_at_k, search

    data, qs = random_unit(n, dim, 1), random_unit(queries, dim, 2)
    exact, exact_info = build_index(data, "flat")
    _, truth = search(exact, qs, 10)
    records = [
        emit(
            {
                "bench": "scaling",
                "kind": "flat",
                "vectors": n,
                "dim": dim,
                "build_s": exact_info.build_seconds,
                "query_ms": round(query_latency_ms(exact, qs), 3),
                "recall_at_10": 1.0,
            }
        )
    ]
    ivf, info = build_index(data, "ivf")
    records.append(
        emit(
            {
                "bench": "scaling",
                "kind": "ivf",
                "vectors": n,
                "dim": dim,
                "nlist": info.nlist,
                "nprobe": info.nprobe,
                "train_size": info.train_size,
                "build_s": info.build_seconds,
                "query_ms": round(query_latency_ms(ivf, qs), 3),
                "recall_at_10": round(recall_at_k(truth, search(ivf, qs, 10)[1], 10), 4),
            }
        )
    )
    return records


def bench_recall(name: str, vectors: np.ndarray, queries: int) -> dict:
    """IVF (defaults) vs exact on a collection's own vectors; the queries are held-out members (each vector's
    nearest neighbour is itself, so queries are left out of the index)."""
    from pipeline.search.index import build_index, recall_at_k, search

    vectors = np.asarray(vectors, np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(vectors))
    qs, base = vectors[order[:queries]], vectors[order[queries:]]
    _, truth = search(build_index(base, "flat")[0], qs, 10)
    ivf, info = build_index(base, "ivf")
    recalls = {}
    # the default nprobe (nlist/8, at least 16) and fixed fractions of the lists: at large N the floor of 16
    # no longer matters and the fraction is what the default visits
    for nprobe in sorted({info.nprobe} | {max(1, info.nlist // f) for f in (16, 8, 4)}):
        ivf.nprobe = nprobe
        recalls[nprobe] = round(recall_at_k(truth, search(ivf, qs, 10)[1], 10), 4)
    return emit(
        {
            "bench": "recall",
            "features": name,
            "vectors": len(base),
            "dim": base.shape[1],
            "nlist": info.nlist,
            "nprobe": info.nprobe,
            "queries": len(qs),
            "recall_at_10": recalls[info.nprobe],
            "recall_at_10_by_nprobe": recalls,
        }
    )


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=4000, help="clips for the tiny extraction (+ its recall)")
    parser.add_argument("--vitb-clips", type=int, default=8, help="clips for the ViT-B/16 extraction (0: skip)")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="decode processes per extraction")
    parser.add_argument(
        "--faiss-threads",
        type=int,
        default=1,
        help="OpenMP threads for faiss (0: its default, all cores). 1 by default: a single query "
        "gains nothing from threads, and on a busy machine OpenMP's spin-waiting made a "
        "10k flat query 26 ms with 2 threads vs 1.6 ms with 1",
    )
    parser.add_argument(
        "--collection",
        action="append",
        default=[],
        help="an extracted collection folder whose features join the recall part",
    )
    parser.add_argument("--work-dir", default=None, help="default: a temporary folder, removed at the end")
    args = parser.parse_args()

    import faiss

    from foundation.logs import setup_logging
    from pipeline.search.collection import Collection

    setup_logging()
    emit_machine(cpus=os.cpu_count(), torch_threads=torch.get_num_threads())
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        tmp = Path(tmp)
        results = []
        collections = [(c, Collection(c)) for c in args.collection]
        if args.clips:
            shards = write_clips(tmp / "shards_tiny", args.clips, per_shard=500)
            embedder = make_embedder("tiny", tmp / "text")
            results.append(bench_extraction("tiny", embedder, shards, tmp / "coll_tiny", 64, args.workers))
            collections.insert(0, ("tiny model (random weights), random-block clips", Collection(tmp / "coll_tiny")))
        if args.vitb_clips:
            shards = write_clips(tmp / "shards_vitb", args.vitb_clips, per_shard=args.vitb_clips, seed=1)
            embedder = make_embedder("vit-b16-224", tmp / "text")
            results.append(bench_extraction("vit-b16-224", embedder, shards, tmp / "coll_vitb", 8, args.workers))
        # after extraction: torch and faiss share the OpenMP runtime, so this also sets torch's threads
        if args.faiss_threads:
            faiss.omp_set_num_threads(args.faiss_threads)
        emit({"bench": "machine", "faiss_threads": faiss.omp_get_max_threads()})
        for name, coll in collections:
            if len(coll) >= 1000:  # below that an IVF has too few lists to say anything
                results.append(bench_recall(str(name), coll.vectors(), min(args.queries, len(coll) // 10)))
        for n in (int(s) for s in args.sizes.split(",") if s):
            results.extend(bench_scaling(n, args.dim, args.queries))
    emit_machine()


if __name__ == "__main__":
    main()
