"""Write the assets configs/tiny_*.json read: a tiny text model and small shard sets (docs/SLURM.md).

    python3 -m launch.tiny_assets [--out runs/tiny_assets]       (= make tiny-assets)

Run it from the directory you train from (the repository root): the tiny configs name runs/tiny_assets/...
relative to the working directory. A complete folder is kept, so running it again is cheap.
"""

import argparse
import logging
import sys

from foundation.logs import setup_logging
from pipeline.demo.tiny_assets import DEFAULT_ROOT, write_tiny_assets

log = logging.getLogger("tiny_assets")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", default=DEFAULT_ROOT, help=f"folder to write (default {DEFAULT_ROOT}, where configs/tiny_*.json look)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    assets = write_tiny_assets(args.out)
    log.info("tiny assets in %s: text_model/, images/, videos/, val/", assets.root.resolve())
    if args.out != DEFAULT_ROOT:
        log.info(
            "not the default folder: point the tiny configs at it with --set %s", " --set ".join(assets.overrides())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
