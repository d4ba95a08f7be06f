"""Demo data: the scenes of `pipeline.demo.scenes` rendered with ffmpeg and packed into shards.

Splits: `test` holds one clip of every (shape, colour, motion) triple with fresh backgrounds and positions;
one motion per (shape, colour) pair (three pairs per motion) never occurs in `train`, so part of the test
asks for combinations the model has never seen. Everything is a pure function of the seed; the mp4 bytes
also depend on the ffmpeg build (the same machine gives the same shards).
"""

import csv
import json
import logging
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from foundation.fsutil import atomic_path, atomic_write_json
from pipeline.demo.scenes import Scene, clip_times, plan_scenes, render_frames
from shard_tools.api import RunOptions, ShardOptions, make_shards
from shard_tools.format import MANIFEST
from shard_tools.sources import table_rows

log = logging.getLogger("pipeline.demo.render")


def ffmpeg_exe() -> str:
    """Debian's ffmpeg when on PATH, else the static binary bundled with imageio-ffmpeg."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def rawvideo_input(size: int, fps: int) -> list[str]:
    """An ffmpeg command up to its input: raw RGB frames of size x size at `fps`, on stdin."""
    raw_rgb = f"-f rawvideo -pix_fmt rgb24 -s {size}x{size} -r {fps}".split()
    return [ffmpeg_exe(), "-loglevel", "error", "-y", *raw_rgb, "-i", "pipe:0"]


def encode_clips(
    scenes: list[Scene], folder: Path, size: int, num_frames: int, fps: int, times: np.ndarray
) -> list[Path]:
    """Render every scene and encode each as its own mp4 through ONE ffmpeg process (segment muxer).

    A keyframe is forced at every clip start and the segment length equals one clip, so segment i is
    exactly clip i; the count of frames per file is checked when make-shards decodes them (and by tests).
    """
    folder.mkdir(parents=True, exist_ok=True)
    pattern = folder / ".part-%06d.mp4"
    keyframes = f"expr:eq(mod(n,{num_frames}),0)"  # a keyframe at every clip start
    cmd = rawvideo_input(size, fps) + [
        *"-c:v libx264 -preset veryfast -crf 18 -pix_fmt yuv420p -threads 1".split(),
        *["-g", str(num_frames), "-sc_threshold", "0", "-force_key_frames", keyframes, "-an"],
        *["-f", "segment", "-segment_time", f"{num_frames / fps}", "-reset_timestamps", "1"],
        *["-segment_format", "mp4", str(pattern)],
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for scene in scenes:
            proc.stdin.write(render_frames(scene, size, times).tobytes())
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise RuntimeError(
            f"ffmpeg failed encoding demo clips into {folder} (exit {proc.returncode}): "
            f"{err.strip()[-2000:]}\ncommand: {' '.join(cmd)}"
        )
    paths = []
    for i, scene in enumerate(scenes):
        part, final = folder / f".part-{i:06d}.mp4", folder / f"{scene.key}.mp4"
        if not part.exists():
            raise RuntimeError(
                f"ffmpeg wrote no segment {part.name} for {scene.key} in {folder}; "
                f"expected {len(scenes)} clips (stderr: {err.strip()[-500:]})"
            )
        part.replace(final)  # the rename is what makes a clip visible under its final name
        paths.append(final)
    return paths


def write_images(scenes: list[Scene], folder: Path, size: int) -> list[Path]:
    """One PNG per image scene (lossless; make-shards makes the JPEG), written through ffmpeg as well."""
    folder.mkdir(parents=True, exist_ok=True)
    pattern = folder / ".part-%06d.png"
    cmd = rawvideo_input(size, 1) + ["-start_number", "0", str(pattern)]
    frames = b"".join(render_frames(s, size, np.zeros(1)).tobytes() for s in scenes)
    done = subprocess.run(cmd, input=frames, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"ffmpeg failed writing demo images into {folder}: {done.stderr.decode(errors='replace')[-2000:]}"
        )
    paths = []
    for i, scene in enumerate(scenes):
        final = folder / f"{scene.key}.png"
        (folder / f".part-{i:06d}.png").replace(final)
        paths.append(final)
    return paths


# ---------------------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class DemoSpec:
    """Sizes of the demo data; part of what decides its bytes (with the seed)."""

    seed: int = 0
    train_clips: int = 4800
    images: int = 6000
    size: int = 96  # rendered frame size (square)
    num_frames: int = 16  # rendered frames per clip
    fps: int = 8
    stored_frames: int = 8  # K, frames make-shards keeps per clip


COLUMNS = ("key", "path", "caption", "split", "shape", "colour", "motion", "held_out")
SPLIT_KINDS = {"train": "video", "test": "video", "images": "image"}


def write_table(path: Path, scenes: list[Scene], media: list[Path]) -> None:
    """The CSV make-shards reads (paths relative to it); shape/colour/motion/held_out pass through to each
    sample's `extra`."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for scene, file in zip(scenes, media):
            writer.writerow(
                [
                    scene.key,
                    file.relative_to(path.parent).as_posix(),
                    scene.caption,
                    scene.split,
                    scene.shape,
                    scene.colour,
                    scene.motion,
                    int(scene.held_out),
                ]
            )


def read_table(path: Path) -> list[dict]:
    """The rows of a demo CSV (used by the evaluation to group test clips by shape and colour)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def generate_media(out: Path, spec: DemoSpec) -> dict[str, Path]:
    """Render every split under out/media/{split}/ and write out/{split}.csv; returns {split: csv path}."""
    times = clip_times(spec.num_frames, spec.stored_frames)
    tables = {}
    for split, count in (("train", spec.train_clips), ("test", 0), ("images", spec.images)):
        started = time.time()
        scenes = plan_scenes(spec.seed, split, count, spec.size)
        folder = out / "media" / split
        if SPLIT_KINDS[split] == "image":
            media = write_images(scenes, folder, spec.size)
        else:
            media = encode_clips(scenes, folder, spec.size, spec.num_frames, spec.fps, times)
        tables[split] = out / f"{split}.csv"
        write_table(tables[split], scenes, media)
        took = time.time() - started
        log.info(
            "rendered %d %s samples in %.1f s (%.0f/s) -> %s",
            len(scenes),
            split,
            took,
            len(scenes) / max(took, 1e-9),
            folder,
        )
    return tables


def shard_split(table: Path, shards_dir: Path, split: str, spec: DemoSpec, workers: int, progress: bool = True) -> dict:
    """The normal make-shards CSV path (the rows `make-shards csv --path-col path --key-col key` reads);
    returns the manifest. Any failed row is an error here: the demo's own media must all decode."""
    kind = SPLIT_KINDS[split]
    rows = table_rows(table, path_col="path", caption_col="caption", key_col="key", kind=kind)
    options = ShardOptions(
        name=f"demo_{split}",
        kind=kind,
        frames=spec.stored_frames,
        short_side=spec.size,
        quality=90,
        samples_per_shard=samples_per_shard(count_rows(table)),
    )
    report = make_shards(rows, shards_dir, options, RunOptions(workers=workers, progress=progress))
    if report.failed or report.manifest is None:
        raise RuntimeError(
            f"make-shards could not shard every demo {split} sample from {table} into "
            f"{shards_dir}: {report.summary()} (see the *.stats.json files there)"
        )
    log.info("%s: %s -> %s", split, report.summary(), shards_dir)
    return report.manifest


MIN_SHARDS = 8  # every split feeds up to 2 ranks x 2 loader workers, each reading whole shards
MAX_SAMPLES_PER_SHARD = 250


def samples_per_shard(rows: int) -> int:
    """At least MIN_SHARDS shards per split (the loader wants a shard per reader, more shuffle better)."""
    return max(1, min(MAX_SAMPLES_PER_SHARD, -(-rows // MIN_SHARDS)))


def count_rows(table: Path) -> int:
    with open(table, newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.reader(f)) - 1


def shards_path(out: str | Path, split: str) -> Path:
    """Where `python3 -m launch.demo_data --out OUT` puts a split's shards (each with its manifest.json)."""
    return Path(out) / "shards" / split


def generate(out: str | Path, spec: DemoSpec, workers: int = 2, progress: bool = True) -> dict[str, Path]:
    """Render and shard the demo data into `out`; returns {split: shard folder}.

    A folder already generated with the same spec is reused as is (out/demo.json records the spec and is
    written last), so re-running `make demo` costs nothing here.
    """
    out = Path(out)
    stamp = out / "demo.json"
    folders = {split: shards_path(out, split) for split in SPLIT_KINDS}
    # fit-demo/3: near-upright shapes, larger, shorter travel; a folder made by an older generator is
    # re-rendered rather than reused
    wanted = {
        "format": "fit-demo/3",
        "spec": asdict(spec),
        "complete": True,
        "sharding": {"min_shards": MIN_SHARDS, "max_samples_per_shard": MAX_SAMPLES_PER_SHARD},
    }
    previous = json.loads(stamp.read_text()) if stamp.is_file() else None
    if previous == wanted and all((f / MANIFEST).is_file() for f in folders.values()):
        log.info("demo data in %s is up to date (seed %d); reusing it", out, spec.seed)
        return folders
    if previous is None and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} is not empty and holds no demo.json: give the demo an empty "
            f"or new --out folder (it replaces media/ and shards/ inside it)"
        )
    for old in [out / "media", out / "shards"]:  # another spec or an interrupted run: start over
        if old.exists():
            shutil.rmtree(old)
    atomic_write_json(stamp, dict(wanted, complete=False))
    started = time.time()
    tables = generate_media(out, spec)
    for split, table in tables.items():
        shard_split(table, folders[split], split, spec, workers, progress)
    atomic_write_json(stamp, wanted)
    log.info(
        "demo data (seed %d) ready in %.1f s: %s",
        spec.seed,
        time.time() - started,
        ", ".join(f"{s} -> {p}" for s, p in folders.items()),
    )
    return folders
