"""GPU check of the models (issue 3): numerics and speed of the ViT-B/16 space-time video tower.

1. agreement: bf16 autocast vs fp32 (TF32 off) on the same weights and clips, T = 4: embedding
   cosine, relative error, NormSoftmax loss and the gradient direction; SDPA vs explicit in fp32.
2. speed: forward+backward of the video tower (SpaceTimeTransformer + vid_proj, bf16 autocast) at
   T = 1 and T = 4, SDPA and the explicit softmax side by side: samples/s, peak memory, and model FLOPs
   utilisation = model FLOPs (counted by torch.utils.flop_counter on the explicit formulation, which
   holds every matmul of the math) / time / the card's dense bf16 peak.

The video tower is >95% of FrozenInTime's FLOPs (space-time ViT-B/16: ~46 GFLOPs per frame forward, time
attention included; DistilBERT on a 20-token caption: ~1.7 GFLOPs), and the text tower needs hub weights
that the GPU machine cannot reach.
`--dry-run` runs the same code on the CPU with the tiny config in seconds (tested in CI).

    python bench/gpu_check.py --out gpu_check.json
    python bench/gpu_check.py --dry-run
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.config import preset  # noqa: E402
from models.loss import norm_softmax_loss, sim_matrix  # noqa: E402
from models.video_transformer import SpaceTimeTransformer  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets; first match wins.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
]


class VideoTower(nn.Module):
    def __init__(self, video_cfg, projection_dim: int):
        super().__init__()
        self.video_model = SpaceTimeTransformer.from_config(video_cfg)
        self.vid_proj = nn.Sequential(nn.Linear(video_cfg.embed_dim, projection_dim))

    def forward(self, video):
        return self.vid_proj(self.video_model(video))


def build(name: str, device, seed: int = 0) -> tuple[VideoTower, object]:
    cfg = preset(name)
    torch.manual_seed(seed)
    tower = VideoTower(cfg.video, cfg.projection_dim)
    with torch.no_grad():  # time attention as after training, so it takes part
        for block in tower.video_model.blocks:
            block.timeattn.qkv.weight.normal_(0, 0.02)
            block.timeattn.proj.weight.normal_(0, cfg.video.embed_dim**-0.5)
    return tower.to(device), cfg


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def agreement(tower: VideoTower, cfg, device, batch: int, T: int) -> dict:
    """bf16 autocast vs fp32 on identical inputs; SDPA vs explicit in fp32."""
    g = torch.Generator().manual_seed(1)
    video = torch.randn(batch, T, 3, cfg.video.img_size, cfg.video.img_size, generator=g).to(device)
    text = torch.randn(batch, cfg.projection_dim, generator=g).to(device)
    out = {}
    for label, bf16 in (("fp32", False), ("bf16", True)):
        tower.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            emb = tower(video)
        loss = norm_softmax_loss(sim_matrix(text, emb.float()), cfg.temperature)
        loss.backward()
        grad = torch.cat([p.grad.flatten().float() for p in tower.parameters() if p.grad is not None])
        out[label] = (emb.detach().float(), float(loss.detach()), grad)
    (e32, l32, g32), (e16, l16, g16) = out["fp32"], out["bf16"]
    tower.video_model.set_attn_impl("explicit")
    with torch.no_grad():
        e_explicit = tower(video).float()
    tower.video_model.set_attn_impl("sdpa")
    return {
        "T": T,
        "batch": batch,
        "bf16_min_cosine": float(F.cosine_similarity(e16, e32, dim=1).min()),
        "bf16_max_rel_error": float(((e16 - e32).norm(dim=1) / e32.norm(dim=1)).max()),
        "loss_fp32": l32,
        "loss_bf16": l16,
        "loss_rel_diff": abs(l16 - l32) / abs(l32),
        "grad_cosine": float(F.cosine_similarity(g16, g32, dim=0)),
        "sdpa_vs_explicit_max_rel_error": float(((e_explicit - e32).norm(dim=1) / e32.norm(dim=1)).max()),
    }


def step_flops(tower: VideoTower, video: torch.Tensor, bf16: bool) -> int:
    """Forward+backward FLOPs of one step, counted on the explicit formulation (every matmul visible)."""
    from torch.utils.flop_counter import FlopCounterMode

    tower.video_model.set_attn_impl("explicit")
    try:
        with FlopCounterMode(display=False) as counter, autocast(video.device, bf16):
            tower(video).float().sum().backward()
    finally:
        tower.video_model.set_attn_impl("sdpa")
    tower.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def throughput(
    tower: VideoTower,
    cfg,
    device,
    batch: int,
    T: int,
    steps: int,
    warmup: int,
    bf16: bool,
    peak_tflops: float | None,
    attn_impl: str = "sdpa",
) -> dict:
    video = torch.randn(batch, T, 3, cfg.video.img_size, cfg.video.img_size, device=device)
    tower.train()
    flops = step_flops(tower, video, bf16)
    tower.video_model.set_attn_impl(attn_impl)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        tower.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            emb = tower(video)
        emb.float().sum().backward()

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    tower.video_model.set_attn_impl("sdpa")
    achieved = flops / seconds / 1e12
    return {
        "T": T,
        "batch": batch,
        "attn_impl": attn_impl,
        "precision": "bf16" if bf16 else "fp32",
        "step_ms": seconds * 1e3,
        "samples_per_s": batch / seconds,
        "gflops_per_sample": flops / batch / 1e9,
        "achieved_tflops": achieved,
        "peak_tflops": peak_tflops,
        "mfu": achieved / peak_tflops if peak_tflops else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def peak_for(device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dry-run", action="store_true", help="tiny config on the CPU, a few steps (a test of this script)"
    )
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    ap.add_argument("--batch-t1", type=int, default=64)
    ap.add_argument("--batch-t4", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if not in the table")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.dry_run:
        name, device = "tiny", torch.device(args.device or "cpu")
        args.batch_t1, args.batch_t4, args.steps, args.warmup = 4, 2, 1, 0
        torch.set_num_threads(1)  # a shared CI machine: one thread runs tiny ops fastest
    else:
        name, device = "vit-b16-224", torch.device(args.device or "cuda")
        if device.type == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: run on a GPU machine, or use --dry-run", file=sys.stderr)
            return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for the agreement check
        torch.backends.cudnn.allow_tf32 = False
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_for(device, args.peak_tflops)
    print(f"device: {device_name}; torch {torch.__version__}; config {name}; bf16 peak {peak} TFLOP/s", flush=True)

    tower, cfg = build(name, device)
    report = {"device": device_name, "torch": torch.__version__, "config": name, "dry_run": args.dry_run}
    t0 = time.perf_counter()
    report["agreement"] = agreement(tower, cfg, device, batch=8 if not args.dry_run else 4, T=4)
    a = report["agreement"]
    report["agreement_ok"] = (
        a["bf16_min_cosine"] >= 0.99 and a["grad_cosine"] >= 0.98 and a["sdpa_vs_explicit_max_rel_error"] <= 1e-4
    )
    print(f"agreement ({time.perf_counter() - t0:.1f} s): " + json.dumps(a), flush=True)

    report["speed"] = []
    for T, batch in ((1, args.batch_t1), (4, args.batch_t4)):
        by_impl = {}
        for impl in ("sdpa", "explicit"):
            try:
                r = throughput(
                    tower, cfg, device, batch, T, args.steps, args.warmup, bf16=True, peak_tflops=peak, attn_impl=impl
                )
            except torch.cuda.OutOfMemoryError:  # record it and go on: the other figures still count
                tower.zero_grad(set_to_none=True)
                tower.video_model.set_attn_impl("sdpa")
                torch.cuda.empty_cache()
                report["speed"].append({"T": T, "batch": batch, "attn_impl": impl, "error": "out of memory"})
                print(f"T={T} batch={batch} {impl}: out of memory (try a smaller --batch-t{T})", flush=True)
                continue
            report["speed"].append(r)
            by_impl[impl] = r
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (peak unknown)"
            print(
                f"T={T} batch={batch} bf16 {impl}: {r['samples_per_s']:.1f} samples/s, {r['step_ms']:.1f} ms/step, "
                f"{r['gflops_per_sample']:.4g} GFLOPs/sample, {r['achieved_tflops']:.4g} TFLOP/s, MFU {mfu}, "
                f"peak memory {r['peak_memory_gib']} GiB",
                flush=True,
            )
        if len(by_impl) == 2:
            ratio = by_impl["sdpa"]["step_ms"] / by_impl["explicit"]["step_ms"]
            print(f"T={T}: SDPA / explicit step time = {ratio:.2f}x (goal <= 0.7x)", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print("agreement: " + ("OK" if report["agreement_ok"] else "FAILED"), flush=True)
    return 0 if report["agreement_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
