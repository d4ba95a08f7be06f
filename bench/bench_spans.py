"""Benchmark clips by time span: one long video, many spans, decoded once versus opened once per span.

    python bench/bench_spans.py --minutes 10 --spans 20 --repeat 3 --out /tmp/bench_spans

The video: `--minutes` of testsrc2 at 320x180, 25 fps, x264 preset veryfast (B-frames, CABAC) with its
default keyframe interval (250 frames), like a downloaded source video. The spans: `--spans` clips of 4-12 s
(seeded) in time order: spread over the whole video (one in each of `--spans` equal stretches), or with
`--contiguous` back to back from the start (Panda-70M cuts a video into consecutive clips). Both ways store
K=8 frames per span at short side 256, JPEG q90, in this process (no workers, no tar):
- decode once: `decode_spans(path, all spans)`, what make-shards does for a video's spans;
- one open per span: `decode_spans(path, [span])` for each span (open, index the packets, seek, decode).
Both must store the same bytes (checked). Prints one JSON line per way and the ratio; the best of
`--repeat` runs, CPU seconds of this process (wall seconds beside them). Not a test: no asserts on speed.
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ffmpeg  # noqa: E402

from pipeline.demo.render import ffmpeg_exe  # noqa: E402
from shard_tools.decode import Decoded, FrameSpec, decode_spans  # noqa: E402


def long_video(path: Path, minutes: float) -> Path:
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    source = ffmpeg.input(f"testsrc2=s=320x180:r=25:d={minutes * 60}", f="lavfi")
    (
        ffmpeg.output(source, str(path), vcodec="libx264", preset="veryfast", crf=28, pix_fmt="yuv420p", an=None)
        .global_args("-loglevel", "error")
        .overwrite_output()
        .run(cmd=ffmpeg_exe())
    )
    return path


def make_spans(minutes: float, count: int, seed: int, contiguous: bool) -> list[tuple[float, float]]:
    """`count` spans of 4-12 s in time order: back to back from 0, or one in each of `count` equal stretches."""
    rng = random.Random(seed)
    stretch = minutes * 60 / count
    spans, end = [], 0.0
    for i in range(count):
        length = rng.uniform(4, 12)
        start = end if contiguous else i * stretch + rng.uniform(0, stretch - length)
        end = round(start + length, 3)
        spans.append((round(start, 3), end))
    return spans


def timed(work, repeat: int):
    best = None
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        result = work()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if best is None or cpu < best[0]:
            best = (cpu, wall, result)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--spans", type=int, default=20)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contiguous", action="store_true", help="spans back to back from the start")
    parser.add_argument("--out", default="/tmp/bench_spans")
    args = parser.parse_args()

    video = long_video(Path(args.out) / f"long_{args.minutes:g}min.mp4", args.minutes)
    spans = make_spans(args.minutes, args.spans, args.seed, args.contiguous)
    spec = FrameSpec(frames=args.frames)
    once_cpu, once_wall, once = timed(lambda: decode_spans(str(video), spans, spec), args.repeat)
    per_cpu, per_wall, per = timed(
        lambda: [result for span in spans for result in decode_spans(str(video), [span], spec)], args.repeat
    )
    assert all(isinstance(r, Decoded) for r in once + per), "a span failed"
    assert [r.jpegs for r in once] == [r.jpegs for r in per], "the two ways stored different frames"
    figures = {
        "video": str(video),
        "minutes": args.minutes,
        "spans": len(spans),
        "layout": "contiguous" if args.contiguous else "spread",
        "frames_per_span": args.frames,
        "decode_once_cpu_s": round(once_cpu, 3),
        "decode_once_wall_s": round(once_wall, 3),
        "open_per_span_cpu_s": round(per_cpu, 3),
        "open_per_span_wall_s": round(per_wall, 3),
        "ratio_cpu": round(per_cpu / once_cpu, 2),
        "ratio_wall": round(per_wall / once_wall, 2),
    }
    print(json.dumps(figures))
    print(
        f"{len(spans)} {figures['layout']} spans of a {args.minutes:g} min video: "
        f"decode once {once_cpu:.2f} CPU s ({once_wall:.2f} s wall), "
        f"one open per span {per_cpu:.2f} CPU s ({per_wall:.2f} s wall): {per_cpu / once_cpu:.2f}x"
    )


if __name__ == "__main__":
    main()
