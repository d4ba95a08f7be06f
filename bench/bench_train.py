"""Training throughput of the tiny configs on this machine: samples/s (global and per rank) and the fraction
of step time spent waiting for data, at T=1 (configs/tiny_1f.json) and T=4 (configs/tiny_4f.json, the video
dataset at 4 frames; the image dataset stays at 1), with 1 and 2 ranks (CPU, gloo, ZeRO-2, fp32, the real
streaming loader on generated shards).

    python bench/bench_train.py [--steps 60] [--workers 1] [--out bench/out/train]

Figures are the mean of the TensorBoard `perf/*` scalars after the first logging window (start-up excluded).
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_train_fixtures import launch_ranks, make_tiny_assets, read_log, tb_scalars, wait_all  # noqa: E402


def run_one(config: str, ranks: int, steps: int, workers: int, out: Path, assets: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    overrides = assets + [
        f"optim.total_steps={steps}",
        "log.every_steps=10",
        "eval.every_steps=0",
        "data.eval=[]",
        "eval.best_metric=null",
        "checkpoint.every_steps=0",
        f"data.options.num_workers={workers}",
        f"output_dir={out}",
    ]
    args = ["--config", str(REPO / "configs" / config)] + [a for o in overrides for a in ("--set", o)]
    started = time.time()
    codes = wait_all(launch_ranks(args, ranks, out / "logs"), 900)
    if codes != [0] * ranks:
        raise RuntimeError(f"{config} x{ranks} failed {codes}:\n{read_log(out / 'logs')[-3000:]}")
    tags = tb_scalars(out / "tb")
    mean = lambda tag: statistics.mean(v for s, v in tags[tag] if s > 10)  # noqa: E731 (skip start-up window)
    return {
        "config": config,
        "ranks": ranks,
        "samples_per_s": mean("perf/samples_per_s"),
        "per_rank": mean("perf/samples_per_s_per_device"),
        "data_wait": mean("perf/data_wait_fraction"),
        "step_s": mean("perf/step_time_s"),
        "wall_s": time.time() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=1, help="loader workers per rank")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "train"))
    args = parser.parse_args()
    out = Path(args.out)
    assets = make_tiny_assets(out / "assets")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    rows = []
    for config in ("tiny_1f.json", "tiny_4f.json"):
        for ranks in (1, 2):
            row = run_one(config, ranks, args.steps, args.workers, out / f"{config[:-5]}_x{ranks}", assets)
            rows.append(row)
            print(
                f"{row['config']:14s} ranks {ranks}: {row['samples_per_s']:7.1f} samples/s "
                f"({row['per_rank']:6.1f}/rank), {row['step_s'] * 1000:6.1f} ms/step, "
                f"data wait {100 * row['data_wait']:4.1f}%  (run {row['wall_s']:.0f} s)",
                flush=True,
            )
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
