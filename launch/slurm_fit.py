"""Check a job's resources against its SLURM partition before it is submitted (pipeline/train/slurm_fit.py).

    python3 launch/slurm_fit.py [--what NAME] SCRIPT [SBATCH OPTIONS ...]

Reads SCRIPT's #SBATCH lines, overlays the options (and sbatch's SBATCH_PARTITION), asks `scontrol show
partition` and `sinfo` what the partition offers. Prints `ranks N` (nodes x tasks per node) and then the
sbatch options that lower the script's defaults to what fits, one per line, on stdout; notes on stderr
(timestamped log lines).
Exit 2, with a message naming the option to lower, when a request given at submission cannot fit.
slurm/common.sh (fit_sbatch) calls it for slurm/submit.sh and slurm/curriculum.sh.
"""

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from foundation.logs import setup_logging
from pipeline.train import slurm_fit

log = logging.getLogger("slurm_fit")


def _run(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {out.stderr.strip() or out.returncode}")
    return out.stdout


def main(argv=None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", default=None, help="how to name the job in messages (default: the script)")
    parser.add_argument("script", help="the job script (its #SBATCH lines are the defaults)")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="sbatch options given at submission")
    args = parser.parse_args(argv)
    what = args.what or Path(args.script).name
    defaults = slurm_fit.script_defaults(Path(args.script).read_text())
    given = slurm_fit.parse_sbatch_options(args.options)
    try:
        partitions = slurm_fit.parse_partitions(_run(["scontrol", "show", "partition", "-o"]))
        name = (
            given.get("partition")
            or os.environ.get("SBATCH_PARTITION")
            or defaults.get("partition")
            or slurm_fit.default_partition(partitions)
        )
        name = name.split(",")[0] if name else None
        if name not in partitions:
            log.error(
                "%s: partition %r not found (partitions: %s); choose one with --partition (curriculum.sh: "
                "SBATCH_ARGS=--partition=NAME)",
                what,
                name,
                ", ".join(partitions) or "none",
            )
            return 2
        partition = slurm_fit.build_partition(
            partitions[name], _run(["sinfo", "-h", "-N", "-p", name, "-o", "%N %c %G"])
        )
        fit = slurm_fit.fit_request(defaults, given, partition, what)
    except slurm_fit.ResourceError as err:
        for line in str(err).splitlines():
            log.error("%s", line)
        return 2
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        log.error("%s: cannot ask SLURM what the partition offers: %s", what, err)
        return 2
    for note in fit.notes:
        log.info("%s", note)
    print(f"ranks {fit.ranks}")
    for option in fit.options:
        print(option)
    return 0


if __name__ == "__main__":
    sys.exit(main())
