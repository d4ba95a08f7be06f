"""Benchmark make-shards against the decode floor and video2dataset on the same generated clips.

    python bench/bench_shards.py --clips 40 --out /tmp/bench_shards [--v2d-python /tmp/v2d-venv/bin/python]

Clips: 5-20 s, 480x270 .. 1280x720, 24-30 fps, x264 default GOP, testsrc2/mandelbrot with noise (seeded).
Figures (clips/s per core, from CPU time of the process and its children, one worker):
- make-shards: full path (decode K=8 frames, resize to 256, JPEG q90, tar, stats), --workers 1;
- floor A, PyAV: the same frames decoded and resized with the same seeking, no JPEG, no tar;
- floor B, ffmpeg CLI: `select` of the same 8 frames + scale to 256, rawvideo to a pipe, one thread;
- video2dataset 1.3.0 (its own venv): local files, ResolutionSubsampler(256, scale) re-encoding, 1 process.
  Its venv, without a second torch: see docs/bench/shards.md ("How video2dataset was installed").
Prints a JSON line per measurement and a summary table. Not a test: no asserts on speed.

Before/after a change of the writer (e.g. the damage checks): `--repo DIR` imports shard_tools from another
checkout (`git worktree add /tmp/base COMMIT`), `--images N` adds a run over N JPEG stills (kind image),
`--only-make-shards` skips the floors, `--repeat R` keeps the best of R runs of each measurement,
`--in-process` also times `decode_sample` alone in this process (no workers, no tar: the least noisy
figure of the decoder's own cost).
"""

import argparse
import csv
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def make_media(root: Path, n: int, seed: int, kind: str) -> list[Path]:
    """N synthetic sources (testsrc2 or mandelbrot with noise): kind "clip": 5-20 s mp4s at 480x270 .. 1280x720;
    "image": JPEG stills (q ~ 90) at CC-3M-like sizes, 500x375 .. 1024x768. Existing files are kept."""
    import ffmpeg

    from pipeline.demo.render import ffmpeg_exe

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / (f"clip{i:04d}.mp4" if kind == "clip" else f"img{i:04d}.jpg")
        paths.append(path)
        if path.exists():
            continue
        if kind == "clip":
            w, h = rng.choice([(480, 270), (640, 360), (854, 480), (960, 540), (1280, 720)])
            seconds, fps = rng.randint(5, 20), rng.choice([24, 25, 30])
            output = {
                "vcodec": "libx264",
                "preset": "veryfast",
                "crf": 23,
                "pix_fmt": "yuv420p",
                "movflags": "+faststart",
            }
        else:
            w, h = rng.choice([(500, 375), (640, 480), (800, 533), (1024, 768), (480, 640)])
            seconds, fps, output = 1, 1, {"vframes": 1, "q:v": 3}
        pattern = rng.choice(["testsrc2", "mandelbrot"])
        src = ffmpeg.input(f"{pattern}=s={w}x{h}:r={fps}", f="lavfi", t=seconds).filter("noise", alls=6, allf="t")
        (
            ffmpeg.output(src, str(path), **output)
            .global_args("-loglevel", "error")
            .overwrite_output()
            .run(cmd=ffmpeg_exe())
        )
    return paths


def measure(label: str, fn, clips: int, repeat: int = 1) -> dict:
    runs = []
    for _ in range(repeat):
        c0, t0 = cpu_seconds(), time.monotonic()
        fn()
        runs.append((cpu_seconds() - c0, time.monotonic() - t0))
    cpu, wall = min(runs)
    result = {
        "what": label,
        "clips": clips,
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "clips_per_cpu_s": round(clips / cpu, 3),
        "clips_per_wall_s": round(clips / wall, 3),
    }
    print(json.dumps(result), flush=True)
    return result


def run_make_shards(paths, out: Path, workers: int, kind: str = "video"):
    from shard_tools.api import RunOptions, ShardOptions, make_shards

    shutil.rmtree(out, ignore_errors=True)
    rows = [{"key": p.stem, "path": str(p), "caption": p.stem} for p in paths]
    report = make_shards(
        rows,
        out,
        ShardOptions(name="bench", kind=kind, samples_per_shard=100),
        RunOptions(workers=workers, progress=False),
    )
    assert report.manifest["total_samples"] == len(paths), report.summary()


def decode_in_process(paths, kind: str):
    from shard_tools.decode import FrameSpec, decode_sample

    spec = FrameSpec(frames=8 if kind == "video" else 1)
    for p in paths:
        decode_sample(str(p), kind, spec)


def floor_pyav(paths):
    """Decode + resize the same 8 frames with the shard writer's seeking, skip JPEG and tar."""
    import shard_tools.decode as d

    spec = d.FrameSpec()
    real_encode = d._encode
    d._encode = lambda frame, spec: (
        frame.to_ndarray(
            width=d.resized_size(frame.width, frame.height, 256)[0],
            height=d.resized_size(frame.width, frame.height, 256)[1],
            format="rgb24",
            interpolation="AREA",
        ),
        0,
        0,
    )
    try:
        for p in paths:
            d.decode_sample(str(p), "video", spec)
    finally:
        d._encode = real_encode


def floor_ffmpeg(paths):
    """ffmpeg decoding just the frames it needs: select the 8 indices, scale, rawvideo to a pipe."""
    import av

    from pipeline.demo.render import ffmpeg_exe
    from shard_tools.sampling import resized_size, segment_midpoints

    exe = ffmpeg_exe()
    for p in paths:
        with av.open(str(p)) as c:  # frame count and size, as a real user of the CLI must probe
            s = c.streams.video[0]
            n, w, h = s.frames, s.codec_context.width, s.codec_context.height
        idx = sorted(set(segment_midpoints(n, 8)))
        ow, oh = resized_size(w, h, 256)
        sel = "+".join(f"eq(n\\,{i})" for i in idx)
        out = subprocess.run(
            [
                exe,
                "-loglevel",
                "error",
                "-threads",
                "1",
                "-filter_threads",
                "1",
                "-i",
                str(p),
                "-vf",
                f"select='{sel}',scale={ow}:{oh}:flags=area",
                "-fps_mode",
                "passthrough",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "-",
            ],
            capture_output=True,
            check=True,
        ).stdout
        assert len(out) == len(idx) * ow * oh * 3, (p, len(out))


V2D_SCRIPT = r"""
import sys, yaml
from video2dataset import video2dataset
from video2dataset.subsamplers import ResolutionSubsampler
# 1.3.0 crashes with "'ResolutionSubsampler' object has no attribute 'encode_formats'" (anchors.md): supply it
ResolutionSubsampler.encode_formats = {"video": "mp4"}
if __name__ == "__main__":   # video2dataset starts its logger and workers with "spawn": they re-import this file
    table, out, config = sys.argv[1:4]
    video2dataset(url_list=table, output_folder=out, input_format="csv", output_format="webdataset",
                  url_col="url", caption_col="caption", config=config)
"""

V2D_CONFIG = """
subsampling:
  ResolutionSubsampler:
    args:
      video_size: 256
      resize_mode: "scale"
reading:
  yt_args: {download_size: 360, download_audio_rate: 44100, yt_metadata_args: null}
  timeout: 60
  sampler: null
storage:
  number_sample_per_shard: 100
  oom_shard_count: 5
  captions_are_subtitles: false
distribution:
  processes_count: 1
  thread_count: 1
  subjob_size: 1000
  distributor: "multiprocessing"
"""


def run_v2d(python: str, paths, work: Path):
    work.mkdir(parents=True, exist_ok=True)
    table = work / "clips.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "caption"])
        for p in paths:
            w.writerow([str(p), p.stem])
    (work / "config.yaml").write_text(V2D_CONFIG)
    (work / "run_v2d.py").write_text(V2D_SCRIPT)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(
        [python, str(work / "run_v2d.py"), str(table), str(out), str(work / "config.yaml")],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=60 + 60 * len(paths),
    )
    stats = sorted(out.glob("*_stats.json"))
    ok = sum(json.loads(s.read_text()).get("successes", 0) for s in stats)
    if proc.returncode != 0 or ok != len(paths):
        print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"video2dataset wrote {ok} of {len(paths)} clips (rc {proc.returncode})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/bench_shards")
    ap.add_argument("--v2d-python", help="python of a venv with video2dataset 1.3.0 (skipped if not given)")
    ap.add_argument("--also-two-workers", action="store_true", help="also time make-shards --workers 2 (wall)")
    ap.add_argument("--images", type=int, default=0, help="also time make-shards over N JPEG stills (kind image)")
    ap.add_argument("--only-make-shards", action="store_true", help="skip the floors")
    ap.add_argument("--repeat", type=int, default=1, help="best of R runs per measurement")
    ap.add_argument("--repo", help="import shard_tools from this checkout instead (before/after comparisons)")
    ap.add_argument("--in-process", action="store_true", help="also time decode_sample alone, in this process")
    args = ap.parse_args(argv)
    if args.repo:
        sys.path.insert(0, str(Path(args.repo).resolve()))
    import shard_tools

    print(json.dumps({"shard_tools": str(Path(shard_tools.__file__).parent)}), flush=True)
    root = Path(args.out)
    paths = make_media(root / "clips", args.clips, args.seed, "clip")
    seconds = 0.0
    import av

    for p in paths:
        with av.open(str(p)) as c:
            seconds += float(c.streams.video[0].duration * c.streams.video[0].time_base)
    print(json.dumps({"clips": len(paths), "total_video_s": round(seconds, 1), "load": os.getloadavg()}), flush=True)
    results = [
        measure("make-shards --workers 1", lambda: run_make_shards(paths, root / "shards", 1), len(paths), args.repeat)
    ]
    if args.in_process:
        decode_in_process(paths[:1], "video")  # imports and first-call set-up
        results.append(
            measure(
                "decode_sample in-process, video", lambda: decode_in_process(paths, "video"), len(paths), args.repeat
            )
        )
    if args.images:
        images = make_media(root / "images", args.images, args.seed, "image")
        results.append(
            measure(
                "make-shards --workers 1, JPEG stills (kind image)",
                lambda: run_make_shards(images, root / "shards_img", 1, "image"),
                len(images),
                args.repeat,
            )
        )
        if args.in_process:
            results.append(
                measure(
                    "decode_sample in-process, JPEG stills",
                    lambda: decode_in_process(images, "image"),
                    len(images),
                    args.repeat,
                )
            )
    if not args.only_make_shards:
        results += [
            measure("floor A: PyAV same frames, no JPEG/tar", lambda: floor_pyav(paths), len(paths)),
            measure("floor B: ffmpeg CLI select+scale", lambda: floor_ffmpeg(paths), len(paths)),
        ]
    if args.also_two_workers:
        results.append(
            measure("make-shards --workers 2", lambda: run_make_shards(paths, root / "shards2", 2), len(paths))
        )
    if args.v2d_python:
        results.append(
            measure(
                "video2dataset 1.3.0 ResolutionSubsampler(256)",
                lambda: run_v2d(args.v2d_python, paths, root / "v2d"),
                len(paths),
            )
        )
    print(json.dumps({"load_after": os.getloadavg()}))
    print("\n| what | clips/s per core (CPU time) | clips/s wall |\n|---|---|---|")
    for r in results:
        print(f"| {r['what']} | {r['clips_per_cpu_s']} | {r['clips_per_wall_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
