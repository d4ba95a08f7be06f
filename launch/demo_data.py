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
from pipeline.demo.render import DemoSpec, all_triples, generate
from shard_tools.format import MANIFEST, read_manifest

log = logging.getLogger("demo_data")


def parse_args(argv=None) -> argparse.Namespace:
    d = DemoSpec()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder: media/, {split}.csv, shards/{split}/")
    parser.add_argument("--seed", type=int, default=d.seed, help="every pixel and caption follows from it")
    parser.add_argument(
        "--train-clips",
        type=int,
        default=d.train_clips,
        help="training clips (the held-out test split always has one clip per "
        f"(shape, colour, motion): {len(all_triples())})",
    )
    parser.add_argument("--images", type=int, default=d.images, help="images (captions: shape and colour)")
    parser.add_argument("--size", type=int, default=d.size, help="frame width and height in pixels")
    parser.add_argument("--clip-frames", type=int, default=d.num_frames, help="rendered frames per clip")
    parser.add_argument("--fps", type=int, default=d.fps)
    parser.add_argument("--frames", type=int, default=d.stored_frames, help="K: frames stored per clip")
    parser.add_argument("--workers", type=int, default=2, help="make-shards decode workers")
    return parser.parse_args(argv)


def spec_from_args(args: argparse.Namespace) -> DemoSpec:
    spec = DemoSpec(
        seed=args.seed,
        train_clips=args.train_clips,
        images=args.images,
        size=args.size,
        num_frames=args.clip_frames,
        fps=args.fps,
        stored_frames=args.frames,
    )
    for name in ("train_clips", "images", "size", "num_frames", "fps", "stored_frames"):
        if getattr(spec, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(spec, name)}")
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
