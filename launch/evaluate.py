"""Retrieval evaluation of trained weights on a run config's `data.eval` datasets (docs/TRAINING.md).

    python launch/evaluate.py --checkpoint RUN/weights/best --config RUN/config.json [--out metrics.json]
    python launch/evaluate.py --checkpoint RUN/checkpoints/step_00010000 --config RUN/config.json
    torchrun --nproc_per_node 4 launch/evaluate.py --checkpoint ... --config ...    (ranks share the work)

--checkpoint is a weights folder (weights.safetensors + model_config.json, loaded without DeepSpeed), a
finished DeepSpeed checkpoint folder of a run (consolidated to fp32 here), or a weights file the models
package reads (e.g. the released model_best.pth.tar; the config's model section gives the architecture).
None of them can run code when loaded; a missing, damaged or refused file exits with 2 and a message that
names it and says what to do (docs/TRAINING.md, "Which files are loaded how").
Prints the metrics JSON and writes it to --out (default: metrics/evaluate_<checkpoint name>.json in the
run's output_dir). `--set eval.sliding_window_stride=1 --set eval.window_frames=4` turns on test-time
sliding-window averaging (the eval dataset then loads num_frames = a multiple of window_frames).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from foundation.fsutil import atomic_write_json
from foundation.logs import setup_logging
from foundation.safeload import DamagedFileError
from foundation.schema import ConfigError
from pipeline.train.checkpoints import load_model
from pipeline.train.config import load_config
from pipeline.train.distributed import device_for, init_distributed, read_env, shutdown
from pipeline.train.evaluation import evaluate_run

log = logging.getLogger("evaluate")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="weights folder, DeepSpeed checkpoint folder or file")
    parser.add_argument("--config", required=True, help="run config JSON (its data.eval datasets are scored)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None, help="metrics JSON to write")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    env = read_env()
    setup_logging(rank=env.rank if env.world_size > 1 else None)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        log.error("%s", err)
        return 2
    if not cfg.data.eval:
        log.error("%s: data.eval lists no dataset to evaluate on", args.config)
        return 2
    if env.world_size > 1:
        init_distributed(env, timeout_s=cfg.deepspeed.comm_timeout_s)
    try:
        device = device_for(env)
        dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
        model = load_model(args.checkpoint, cfg.model).to(device=device, dtype=dtype)
        results = evaluate_run(model, cfg, env, device, dtype, float(model.temperature()))
        if env.is_main:
            out = (
                Path(args.out)
                if args.out
                else (Path(cfg.output_dir) / "metrics" / f"evaluate_{Path(args.checkpoint).name}.json")
            )
            doc = {"checkpoint": str(args.checkpoint), "config": str(args.config), "metrics": results}
            atomic_write_json(out, doc)
            print(json.dumps(doc, indent=1))
            log.info("metrics written to %s", out)
        return 0
    except (FileNotFoundError, DamagedFileError, ConfigError) as err:  # missing, damaged or refused: named
        log.error("%s", err)
        return 2
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
