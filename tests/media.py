"""Render small test media with ffmpeg (through ffmpeg-python) and build a corpus of bad inputs.

Other tests import this module: `render_clip` for clips, `render_image` for stills, `bad_corpus` for the
inputs that must never crash make-shards. Nothing here downloads anything.
"""
import shutil
from pathlib import Path

import ffmpeg


def ffmpeg_exe() -> str:
    """Debian's ffmpeg when on PATH, else the static binary bundled with imageio-ffmpeg."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def render_clip(path, seconds: float = 1.0, size=(64, 48), fps: int = 10, pattern: str = "testsrc2",
                gop: int | None = None, faststart: bool = True, crf: int = 28) -> Path:
    """Write an H.264 mp4 of `seconds` at `size` (w, h) and `fps` from a lavfi source `pattern`.

    `gop` sets the keyframe interval in frames (None: x264's default); `faststart` puts the index first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    src = ffmpeg.input(f"{pattern}=s={w}x{h}:r={fps}:d={seconds}", f="lavfi")
    out_args = {"vcodec": "libx264", "preset": "ultrafast", "crf": crf, "pix_fmt": "yuv420p",
                "threads": 1, "an": None}
    if gop is not None:
        out_args["g"] = gop
    if faststart:
        out_args["movflags"] = "+faststart"
    (ffmpeg.output(src, str(path), **out_args)
     .global_args("-loglevel", "error").overwrite_output().run(cmd=ffmpeg_exe()))
    return path


def render_frames(path, frames: int, size=(64, 48), fps: int = 10) -> Path:
    """A clip with exactly `frames` frames (e.g. 1, or fewer than K)."""
    return render_clip(path, seconds=frames / fps, size=size, fps=fps)


def render_image(path, size=(64, 48), pattern: str = "testsrc2") -> Path:
    """One still image; the format follows the suffix (.jpg, .png). A suffix-less path gets JPEG bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    fmt = {} if path.suffix else {"f": "image2", "vcodec": "mjpeg"}
    (ffmpeg.input(f"{pattern}=s={w}x{h}:r=1:d=1", f="lavfi")
     .output(str(path), vframes=1, **fmt, update=1)
     .global_args("-loglevel", "error").overwrite_output().run(cmd=ffmpeg_exe()))
    return path


def render_audio(path, seconds: float = 1.0) -> Path:
    """An mp4 holding only an AAC audio track (no video stream)."""
    path = Path(path)
    (ffmpeg.input(f"sine=frequency=440:duration={seconds}", f="lavfi")
     .output(str(path), acodec="aac", vn=None)
     .global_args("-loglevel", "error").overwrite_output().run(cmd=ffmpeg_exe()))
    return path


def bad_corpus(root) -> dict[str, Path]:
    """Write the bad-input media corpus under `root`; returns {case name: path}.

    Cases: zero-byte file, mp4 truncated in the middle, text file named .mp4, audio-only mp4,
    a 1-frame clip, a clip shorter than K=8 frames, a huge-resolution clip, a corrupt JPEG.
    (CSV-level cases, i.e. missing fields and bad captions, live in the tests that write CSVs.)
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cases = {}
    cases["zero_byte"] = root / "zero.mp4"
    cases["zero_byte"].write_bytes(b"")
    whole = render_clip(root / "whole.mp4", seconds=2, size=(64, 48), fps=10, gop=5)
    data = whole.read_bytes()
    cases["truncated"] = root / "truncated.mp4"
    cases["truncated"].write_bytes(data[: len(data) // 2])
    cases["text_as_mp4"] = root / "text.mp4"
    cases["text_as_mp4"].write_text("this is not a video, it is a text file named .mp4\n" * 20)
    cases["audio_only"] = render_audio(root / "audio.mp4")
    cases["one_frame"] = render_frames(root / "one.mp4", 1)
    cases["short"] = render_frames(root / "five.mp4", 5)
    cases["huge"] = render_clip(root / "huge.mp4", seconds=0.2, size=(4096, 2304), fps=10, pattern="color")
    jpg = render_image(root / "good.jpg")
    raw = jpg.read_bytes()
    cases["corrupt_image"] = root / "corrupt.jpg"
    cases["corrupt_image"].write_bytes(raw[:40] + b"\x00garbage" * 16)
    return cases
