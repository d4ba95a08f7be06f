"""Render the demo data only: captioned shape clips and images, packed into shards (docs/DEMO.md).

    python -m launch.demo_data --out demo_data             # what `make demo` renders first
    python -m launch.demo_data --out small --train-clips 64 --images 32 --size 48

Out: media/ (mp4s and pngs), {split}.csv, shards/{split}/ with a manifest each, demo.json (the spec,
written last: the same command on a finished folder reuses it). Exit codes: 0 done, 2 bad arguments or an
--out folder that holds something else.
"""

import argparse
import logging
import sys

from foundation.logs import setup_logging
from pipeline.demo.render import DemoSpec, generate
from pipeline.demo.scenes import all_triples
from shard_tools.format import MANIFEST, read_manifest

log = logging.getLogger("demo_data")


# the option that sets each DemoSpec field
OPTIONS = {
    "seed": "--seed",
    "train_clips": "--train-clips",
    "images": "--images",
    "size": "--size",
    "num_frames": "--clip-frames",
    "fps": "--fps",
    "stored_frames": "--frames",
}


def parse_args(argv=None) -> argparse.Namespace:
    d = DemoSpec()
    triples = len(all_triples())
    helps = {
        "seed": "every pixel and caption follows from it",
        "train_clips": f"training clips (the held-out test split has one clip per (shape, colour, motion): {triples})",
        "images": "images (captions: shape and colour)",
        "size": "frame width and height in pixels",
        "num_frames": "rendered frames per clip",
        "fps": "frames per second of the rendered clips",
        "stored_frames": "K: frames stored per clip",
    }
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder: media/, {split}.csv, shards/{split}/")
    for field, option in OPTIONS.items():
        parser.add_argument(option, dest=field, type=int, default=getattr(d, field), help=helps[field])
    parser.add_argument("--workers", type=int, default=2, help="make-shards decode workers")
    return parser.parse_args(argv)


def spec_from_args(args: argparse.Namespace) -> DemoSpec:
    spec = DemoSpec(**{field: getattr(args, field) for field in OPTIONS})
    for field, option in OPTIONS.items():
        if field != "seed" and getattr(spec, field) < 1:
            raise ValueError(f"{option} must be at least 1, got {getattr(spec, field)}")
    if spec.num_frames < spec.stored_frames:
        raise ValueError(
            f"--clip-frames {spec.num_frames} is below --frames {spec.stored_frames}: "
            "every stored frame must be a distinct rendered frame"
        )
    return spec


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        folders = generate(args.out, spec_from_args(args), workers=args.workers)
    except (ValueError, FileExistsError) as err:
        log.error("%s", err)
        return 2
    for split, folder in folders.items():
        manifest = read_manifest(folder / MANIFEST)
        print(f"{split}: {manifest['total_samples']} samples in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
