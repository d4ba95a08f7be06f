"""Train a Frozen-in-Time model with DeepSpeed ZeRO (docs/TRAINING.md).

    deepspeed --num_gpus 8 launch/train.py --config configs/pretrain_1f.json [--resume auto]
    torchrun --nproc_per_node 8 launch/train.py --config configs/pretrain_1f.json
    srun python launch/train.py --config configs/pretrain_1f.json --resume auto      (one task per GPU)
    python launch/train.py --config configs/tiny_1f.json --set optim.lr=1e-4 --set output_dir=runs/x
    python launch/train.py --config configs/tiny_1f.json --check --ranks 16     (validate only, start nothing)

Exit codes: 0 done, 75 (foundation.preemption.EXIT_PREEMPTED) stopped by SIGUSR1/SIGTERM after saving a
checkpoint (requeue with --resume auto), 2 bad config or arguments, or a checkpoint to resume from that is
missing or damaged (named in the log; not worth a requeue), 1 anything else (e.g. a data-path error).
--check (what slurm/ runs before it submits a stage): load and validate the config with its overrides and
the files it reads (pipeline.train.config.check_inputs), print every problem, exit 0 or 2; no ranks, no DeepSpeed.
"""

import argparse
import logging
import sys
import warnings

from foundation.logs import setup_logging
from foundation.preemption import PreemptionFlag
from foundation.schema import ConfigError
from pipeline.train.config import check_inputs, describe_temporal_rows, load_config
from pipeline.train.distributed import init_distributed, read_env, shutdown

log = logging.getLogger("train")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config JSON")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (JSON value or string), e.g. optim.lr=1e-4, "
        "data.train[0].batch_size=32; repeatable",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="auto|DIR",
        help="auto: the newest complete checkpoint of output_dir (none: start fresh); or a checkpoint folder",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config, its overrides and its input files, then exit (0: fine, 2: not)",
    )
    parser.add_argument(
        "--ranks",
        type=int,
        default=None,
        metavar="N",
        help="with --check: the number of ranks the job will have (default: from the environment)",
    )
    parser.add_argument(
        "--local_rank",
        "--local-rank",
        type=int,
        default=None,
        help="set by the deepspeed launcher (the rank is read from the environment)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    preempt = PreemptionFlag().install()  # first: SLURM may signal while torch is still importing
    args = parse_args(argv)
    env = read_env()
    setup_logging(rank=env.rank if env.world_size > 1 else None)
    if env.rank != 0:
        logging.getLogger().setLevel(logging.WARNING)  # one progress line per job, from rank 0
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        log.error("%s", err)
        return 2
    if args.check:
        return check(cfg, args.config, args.ranks or env.world_size)
    log.info("%s", describe_temporal_rows(cfg))
    # DeepSpeed 0.19's comm layer (deepspeed/comm/torch.py, ZeRO's gathers) calls
    # torch.distributed.all_gather_into_tensor / reduce_scatter_tensor, which torch 2.14 deprecates for
    # all_gather_single / reduce_scatter_single; our code calls neither and DeepSpeed has no setting to switch.
    # Every rank printed the FutureWarning on every step (models/loss.py's catch_warnings resets the
    # once-per-location registry), a third of a tiny job's log: drop exactly these two messages.
    warnings.filterwarnings(
        "ignore",
        category=FutureWarning,
        message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated",
    )
    # torch and DeepSpeed load here, after the preemption flag is installed and the config checked: a signal
    # during these seconds of imports is kept, and --check and config errors answer without them
    from foundation.safeload import DamagedFileError
    from pipeline.train.trainer import train

    init_distributed(env, timeout_s=cfg.deepspeed.comm_timeout_s)
    try:
        return train(cfg, env, resume=args.resume, preempt=preempt)
    except (FileNotFoundError, DamagedFileError) as err:  # a missing or damaged checkpoint: the message names it
        log.error("%s", err)
        return 2
    finally:
        shutdown()


def check(cfg, config_path: str, ranks: int) -> int:
    """--check: report every problem with the inputs for `ranks` ranks; 0 when there is none."""
    problems = check_inputs(cfg, world_size=ranks)
    for problem in problems:
        log.error("%s: %s", config_path, problem)
    if problems:
        return 2
    log.info("%s", describe_temporal_rows(cfg))
    log.info("%s: config OK for %d rank(s) (output_dir %s)", config_path, ranks, cfg.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
