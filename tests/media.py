"""Render small test media with ffmpeg (through ffmpeg-python) and build a corpus of bad inputs.

Other tests import this module: `render_clip` for clips, `render_image` for stills, `bad_corpus` for the
inputs that must never crash make-shards. Nothing here downloads anything.
"""

import subprocess
from pathlib import Path

import ffmpeg

from pipeline.demo.render import ffmpeg_exe


def render_clip(
    path,
    seconds: float = 1.0,
    size=(64, 48),
    fps: int = 10,
    pattern: str = "testsrc2",
    gop: int | None = None,
    faststart: bool = True,
    crf: int = 28,
    preset: str = "ultrafast",
    x264_params: str | None = None,
) -> Path:
    """Write an H.264 mp4 of `seconds` at `size` (w, h) and `fps` from a lavfi source `pattern`.

    `gop` sets the keyframe interval in frames (None: x264's default); `faststart` puts the index first.
    `preset` ultrafast gives CAVLC without B-frames; slower presets give CABAC with B-frames, like real
    clips; `x264_params` e.g. "open-gop=1".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    src = ffmpeg.input(f"{pattern}=s={w}x{h}:r={fps}:d={seconds}", f="lavfi")
    out_args = {"vcodec": "libx264", "preset": preset, "crf": crf, "pix_fmt": "yuv420p", "threads": 1, "an": None}
    if x264_params:
        out_args["x264-params"] = x264_params
    if gop is not None:
        out_args["g"] = gop
    if faststart:
        out_args["movflags"] = "+faststart"
    (
        ffmpeg.output(src, str(path), **out_args)
        .global_args("-loglevel", "error")
        .overwrite_output()
        .run(cmd=ffmpeg_exe())
    )
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
    (
        ffmpeg.input(f"{pattern}=s={w}x{h}:r=1:d=1", f="lavfi")
        .output(str(path), vframes=1, **fmt, update=1)
        .global_args("-loglevel", "error")
        .overwrite_output()
        .run(cmd=ffmpeg_exe())
    )
    return path


def render_audio(path, seconds: float = 1.0) -> Path:
    """An mp4 holding only an AAC audio track (no video stream)."""
    path = Path(path)
    (
        ffmpeg.input(f"sine=frequency=440:duration={seconds}", f="lavfi")
        .output(str(path), acodec="aac", vn=None)
        .global_args("-loglevel", "error")
        .overwrite_output()
        .run(cmd=ffmpeg_exe())
    )
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


# ---- damaged and unusual media (made at test time from clean renders) -------------------------------


def video_packets(path) -> list[tuple[int, int]]:
    """(file offset, size) of every video packet, in file order."""
    import av

    with av.open(str(path)) as c:
        return [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size and p.pos is not None]


def damage_bytes(data: bytes, at: int, length: int, mode: str) -> bytes:
    """`data` with `length` bytes at offset `at` zeroed ("zero") or inverted ("flip")."""
    out = bytearray(data)
    for i in range(at, min(at + length, len(out))):
        out[i] = 0 if mode == "zero" else out[i] ^ 0xFF
    return bytes(out)


def jpeg_scan_range(data: bytes) -> tuple[int, int]:
    """(start, end) of the entropy-coded data of a baseline JPEG: after the SOS header, before EOI."""
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    return start, data.rindex(b"\xff\xd9")


def render_quadrants(path, size=(48, 32), seconds: float = 0.5, fps: int = 10, rotate: int = 0) -> Path:
    """A clip (or a .png/.jpg still) of four coloured quadrants (red, green / blue, white), so any turn or
    mirror of it is visible; `rotate` (degrees clockwise, a multiple of 90) is written as display-matrix
    metadata, as phones do, with the pixels left as they are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size[0] // 2, size[1] // 2
    graph = (
        f"color=red:s={w}x{h}:r={fps}:d={seconds}[a];color=green:s={w}x{h}:r={fps}:d={seconds}[b];"
        f"color=blue:s={w}x{h}:r={fps}:d={seconds}[c];color=white:s={w}x{h}:r={fps}:d={seconds}[d];"
        f"[a][b]hstack[top];[c][d]hstack[bottom];[top][bottom]vstack"
    )
    exe = ffmpeg_exe()
    if path.suffix in (".png", ".jpg"):
        subprocess.run(
            [exe, "-loglevel", "error", "-y", "-filter_complex", graph, "-frames:v", "1", str(path)], check=True
        )
        return path
    plain = path.with_name(path.stem + ".upright.mp4")
    subprocess.run(
        [
            exe,
            "-loglevel",
            "error",
            "-y",
            "-filter_complex",
            graph,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-threads",
            "1",
            str(plain),
        ],
        check=True,
    )
    # FFmpeg < 6 takes the `rotate` tag (clockwise); newer ones only -display_rotation (counter-clockwise)
    tagged = subprocess.run(
        [
            exe,
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(plain),
            "-c",
            "copy",
            "-metadata:s:v",
            f"rotate={rotate}",
            str(path),
        ],
        capture_output=True,
    )
    if tagged.returncode != 0 or _display_rotation(path) != rotate % 360:
        subprocess.run(
            [
                exe,
                "-loglevel",
                "error",
                "-y",
                "-display_rotation",
                str(-rotate),
                "-i",
                str(plain),
                "-c",
                "copy",
                str(path),
            ],
            check=True,
        )
    plain.unlink()
    assert _display_rotation(path) == rotate % 360, f"{path}: could not write rotation metadata"
    return path


def _display_rotation(path) -> int:
    """PyAV's frame.rotation, which follows the `rotate` tag's (clockwise) sign, in 0..359."""
    import av

    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        return int(round(frame.rotation)) % 360


def upright_frames(path) -> list:
    """RGB frames of `path` as ffmpeg's CLI shows them (it applies the display matrix by itself)."""
    import av

    out = Path(str(path) + ".upright.nut")
    subprocess.run(
        [ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(path), "-c:v", "rawvideo", "-pix_fmt", "rgb24", str(out)],
        check=True,
    )
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    out.unlink()
    return frames


def lie_about_duration(path, seconds: float = 0.03) -> Path:
    """Rewrite the duration fields of an mp4's headers (mvhd, tkhd, mdhd; version 0 boxes) to claim
    `seconds`, leaving every frame and timestamp in place: a header that lies."""
    data = bytearray(Path(path).read_bytes())
    movie_scale = None
    for box, scale_at, duration_at in (("mvhd", 12, 16), ("tkhd", None, 20), ("mdhd", 12, 16)):
        at = 0
        while (at := data.find(box.encode(), at)) >= 0:
            body = at + 4  # version (1 byte) + flags (3), then the fields
            assert data[body] == 0, f"{box} version {data[body]} not handled"
            if scale_at is not None:
                scale = int.from_bytes(data[body + scale_at : body + scale_at + 4], "big")
                movie_scale = movie_scale or scale
            else:
                scale = movie_scale  # tkhd counts in the movie's time scale
            data[body + duration_at : body + duration_at + 4] = int(seconds * scale).to_bytes(4, "big")
            at += 4
    Path(path).write_bytes(bytes(data))
    return Path(path)


def write_still(path, rgb) -> Path:
    """Write an RGB uint8 array [H, W, 3] as .jpg (simplejpeg, q95) or .png (PyAV): any size, 1x1 too
    (ffmpeg's lavfi sources refuse the smallest ones)."""
    import av
    import numpy as np
    import simplejpeg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if path.suffix == ".jpg":
        path.write_bytes(simplejpeg.encode_jpeg(rgb, quality=95, colorspace="RGB", colorsubsampling="420"))
        return path
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def jpeg_with_orientation(path, rgb, orientation: int) -> Path:
    """A JPEG of `rgb` with an EXIF Orientation tag (1 upright, 3 upside down, 6 and 8 the two quarter
    turns), as phone cameras write; the pixels are stored unturned."""
    import struct

    import simplejpeg

    tiff = (
        b"II*\x00"
        + struct.pack("<I", 8)
        + struct.pack("<H", 1)
        + struct.pack("<HHII", 0x0112, 3, 1, orientation)
        + struct.pack("<I", 0)
    )
    app1 = b"Exif\x00\x00" + tiff
    jpeg = simplejpeg.encode_jpeg(rgb, quality=95, colorspace="RGB", colorsubsampling="420")
    path = Path(path)
    path.write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:])
    return path
