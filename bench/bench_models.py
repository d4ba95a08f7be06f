"""Video encoder forward+backward per sample: SDPA kernels vs the original's explicit softmax (issue 3).

For each config (tiny, ViT-B/16 at 224) and T in {1, 4}, the same SpaceTimeTransformer weights run the
grouped space-time attention two ways, interleaved rep by rep so machine load hits both alike:
  explicit: softmax(q k^T * scale) v with the probability matrix materialised (what the original computes);
  sdpa:     torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient kernels).
A second table times the attention alone (one block's time + space attention, ViT-B/16 sizes), where the
two differ; the rest of the block (qkv/proj/MLP matmuls) is the same code in both.

Figures are CPU time per sample (time.process_time: all threads of this process, less disturbed by other
jobs than wall time), with wall time beside them. Goal: sdpa <= 0.7x explicit.

    python bench/bench_models.py                     # tiny + vit-b16, T = 1, 4
    python bench/bench_models.py --configs tiny --frames 1 --reps 1 --json out.json
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.config import preset  # noqa: E402
from models.video_transformer import ATTENTION_KERNELS, SpaceTimeTransformer, grouped_attention  # noqa: E402

CONFIGS = {"tiny": "tiny", "vit-b16": "vit-b16-224"}
BATCH = {"tiny": 16, "vit-b16": 2}


def time_step(fn, samples: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per sample of one call of fn."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return ((time.process_time() - cpu) * 1e3 / samples, (time.perf_counter() - wall) * 1e3 / samples)


def compare(step_for: dict, samples: int, reps: int, warmup: int) -> dict:
    """Median CPU/wall ms per sample for each implementation, reps interleaved."""
    for _ in range(warmup):
        for step in step_for.values():
            step()
    runs = {impl: [] for impl in step_for}
    for _ in range(reps):
        for impl, step in step_for.items():
            runs[impl].append(time_step(step, samples))
    return {
        impl: {"cpu_ms": statistics.median(r[0] for r in rs), "wall_ms": statistics.median(r[1] for r in rs)}
        for impl, rs in runs.items()
    }


def bench_model(name: str, T: int, reps: int, warmup: int, batch: int) -> dict:
    video_cfg = preset(CONFIGS[name]).video
    torch.manual_seed(0)
    model = SpaceTimeTransformer.from_config(video_cfg).train()
    with torch.no_grad():  # time attention as after training: not the zero init
        for block in model.blocks:
            block.timeattn.qkv.weight.normal_(0, 0.02)
    video = torch.randn(batch, T, 3, video_cfg.img_size, video_cfg.img_size)

    def step_with(impl):
        def step():
            model.set_attn_impl(impl)
            model.zero_grad(set_to_none=True)
            model(video).sum().backward()

        return step

    result = compare({"explicit": step_with("explicit"), "sdpa": step_with("sdpa")}, batch, reps, warmup)
    return {"config": name, "T": T, "batch": batch, **result}


def bench_attention(T: int, reps: int, warmup: int, batch: int = 2) -> dict:
    """One block's two grouped attentions (time + space) forward+backward, ViT-B/16 sizes (12 x 64, n = 196)."""
    torch.manual_seed(0)
    qkv = torch.randn(batch, 1 + T * 196, 3, 12, 64, requires_grad=True)

    def step_with(impl):
        def step():
            qkv.grad = None
            attend = ATTENTION_KERNELS[impl]
            out = grouped_attention(qkv, "time", T, attend) + grouped_attention(qkv, "space", T, attend)
            out.sum().backward()

        return step

    result = compare({"explicit": step_with("explicit"), "sdpa": step_with("sdpa")}, batch, reps, warmup)
    return {"config": "attention only (ViT-B/16 block)", "T": T, "batch": batch, **result}


def row(r: dict) -> str:
    e, s = r["explicit"], r["sdpa"]
    return (
        f"| {r['config']} | {r['T']} | {r['batch']} | {e['cpu_ms']:.1f} | {s['cpu_ms']:.1f} | "
        f"**{s['cpu_ms'] / e['cpu_ms']:.2f}x** | {e['wall_ms']:.1f} / {s['wall_ms']:.1f} |"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny,vit-b16", help="comma list of: " + ", ".join(CONFIGS))
    ap.add_argument("--frames", default="1,4")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--no-attention", action="store_true", help="skip the attention-only table")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    frames = [int(t) for t in args.frames.split(",")]

    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs")
    results = []
    header = (
        "| config | T | batch | explicit CPU ms/sample | SDPA CPU ms/sample | SDPA / explicit | "
        "wall ms/sample (explicit / SDPA) |\n|---|---|---|---|---|---|---|"
    )
    print(header)
    for name in configs:
        for T in frames:
            results.append(bench_model(name, T, args.reps, args.warmup, BATCH[name]))
            print(row(results[-1]), flush=True)
    if not args.no_attention:
        for T in frames:
            results.append(bench_attention(T, args.reps, args.warmup))
            print(row(results[-1]), flush=True)
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
