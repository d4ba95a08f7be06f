"""The first command: built-in demo data, 1-frame then 4-frame training, evaluation, a table (docs/DEMO.md).

    python -m launch.demo                    # what `make demo` runs; everything goes to demo_run/
    python -m launch.demo --out runs/demo --seed 1
    python -m launch.demo --set-1f optim.total_steps=50 --set-4f optim.total_steps=50    # a quick look

Exit codes: 0 done and the learning check passed, 3 done but the check failed (the table says by how
much), 2 bad arguments, 1 anything else.
"""

import argparse
import logging
import sys
from pathlib import Path

from foundation.logs import setup_logging
from pipeline.demo.render import DemoSpec
from pipeline.demo.run import DemoOptions, results_table, run_demo, stage_dir

log = logging.getLogger("demo")


def parse_args(argv=None):
    d = DemoSpec()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_run", help="folder for data, runs, logs and results")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the models and the loader")
    parser.add_argument("--train-clips", type=int, default=d.train_clips)
    parser.add_argument("--images", type=int, default=d.images)
    parser.add_argument("--nproc", type=int, default=2, help="training ranks (one per core)")
    parser.add_argument(
        "--set-1f",
        dest="set_1f",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override configs/demo_1f.json (repeatable)",
    )
    parser.add_argument(
        "--set-4f",
        dest="set_4f",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override configs/demo_4f.json (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars while sharding")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    if args.train_clips < 1 or args.images < 1 or args.nproc < 1:
        log.error("--train-clips, --images and --nproc must be at least 1")
        return 2
    out = Path(args.out).resolve()
    opts = DemoOptions(
        checkout=Path(__file__).resolve().parents[1],
        out=out,
        seed=args.seed,
        nproc=args.nproc,
        progress=not args.no_progress,
        data=DemoSpec(seed=args.seed, train_clips=args.train_clips, images=args.images),
        overrides={"1f": args.set_1f, "4f": args.set_4f},
    )
    results = run_demo(opts)
    print()
    print(
        f"Frozen-in-Time demo, seed {args.seed}: text -> video retrieval on "
        f"{results['stages']['4f']['queries']['overall']['queries']} held-out clips"
    )
    print(results_table(results))
    print()
    print(f"Everything is in {out}:")
    for stage in ("1f", "4f"):
        run = stage_dir(out, stage)
        print(
            f"  {stage}: weights {run / 'weights' / 'final'}, checkpoints {run / 'checkpoints'}, "
            f"TensorBoard {run / 'tb'}"
        )
    print(f"  data {out / 'data'}, logs {out / 'logs'}, results {out / 'results.md'} and {out / 'results.json'}")
    print(f"  tensorboard --logdir {out}    # loss curves of both stages")
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in results["seconds"].items() if k != "total")
    print(f"Wall time {results['seconds']['total']:.0f} s ({parts})")
    return 0 if results["check"]["passed"] else 3


if __name__ == "__main__":
    sys.exit(main())
