"""Decode the K stored frames of one clip (or the single frame of an image) with PyAV, then JPEG-encode.

Why PyAV + simplejpeg: docs/DECODERS.md. The strategy, per file:
1. one demux pass (no decoding) lists every video packet's pts and keyframe flag, which gives the true
   frame count in presentation order, whatever the container's header claims;
2. the wanted frames are decoded in order, seeking to the keyframe before a wanted frame only when that
   keyframe lies beyond the current decode position (short GOPs skip most of the clip, long GOPs decode
   straight through);
3. each wanted frame is converted to RGB and resized in the decoder (swscale, area filter), turned upright
   by the stream's display matrix (phone videos), then encoded with simplejpeg.
Every failure raises `SampleError(reason, detail)`; the reasons are listed in docs/SHARDS.md.

Damaged data must fail as `decode_error`, not become garbage frames: FFmpeg conceals damage (grey/green
blocks) and says so only in the frame's flags, so every frame decoded on the way to a stored frame is
checked (`is_corrupt`: decode_error_flags or AV_FRAME_FLAG_CORRUPT). Intra-only codecs (still images,
MJPEG) also decode with err_detect=explode (the MJPEG decoder otherwise paints a half-truncated JPEG grey
and reports nothing). Inter-coded video does not use explode: it fails clean open-GOP clips after a seek
(the leading frames miss their references). Both checks cost nothing measurable; a second, strict
libjpeg-turbo decode of JPEG sources would catch a few more entropy-data errors but costs ~25% per image
(docs/bench/shards.md), so it is not done.
"""

import bisect
import os
import statistics
from dataclasses import dataclass, field

import av
import numpy as np
import simplejpeg

from shard_tools.sampling import resized_size, segment_midpoints
from shard_tools.spans import span_frame_indices


class SampleError(Exception):
    """One input row could not become a sample; `reason` is a short stable code, `detail` says why."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# File suffixes taken as images (one frame each) and as videos when a folder of media is read (search's --media)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")


@dataclass(frozen=True)
class FrameSpec:
    """What to store per sample; part of the options that decide the shards' bytes."""

    frames: int = 8  # K for videos; images always store 1
    short_side: int = 256
    quality: int = 90
    max_pixels: int = 8192 * 4320  # refuse sources above this (8K); guards memory in the worker


@dataclass
class Decoded:
    jpegs: list[bytes]
    meta: dict = field(default_factory=dict)  # frame_indices, frame_timestamps, duration, fps, width, height


def decode_sample(path: str, kind: str, spec: FrameSpec) -> Decoded:
    """Decode `path` as a video (K frames) or an image (1 frame). Raises SampleError on any failure."""
    decode = _decode_image if kind == "image" else _decode_video
    return _with_stream(path, kind, spec, lambda container, stream: decode(container, stream, spec, path))


def decode_spans(path: str, spans: list[tuple[float, float]], spec: FrameSpec) -> list:
    """The K frames of every span (start, end in seconds) of the video `path`, opened once and decoded
    forward once: one Decoded per span, or (reason, detail) for a span that fails on its own (it starts
    at or after the video's end). A failure of the file itself raises SampleError (it costs every span)."""
    return _with_stream(
        path, "video", spec, lambda container, stream: _decode_spans(container, stream, spans, spec, path)
    )


def _with_stream(path: str, kind: str, spec: FrameSpec, decode):
    """Open `path`, check its first video stream and run decode(container, stream); every failure is a
    SampleError."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise SampleError("missing_file", f"{path}: {e.strerror}") from None
    if size == 0:
        raise SampleError("empty_file", f"{path} has 0 bytes")
    try:
        container = av.open(path, mode="r")
    except av.error.FFmpegError as e:
        raise SampleError(
            "not_a_video" if kind == "video" else "not_an_image", f"{path}: FFmpeg cannot open it ({e.strerror or e})"
        ) from None
    try:
        with container:
            if not container.streams.video:
                raise SampleError(
                    "no_video_stream", f"{path} has no video stream ({len(container.streams.audio)} audio streams)"
                )
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # parallelism comes from worker processes
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > spec.max_pixels:
                raise SampleError(
                    "too_many_pixels", f"{path} is {width}x{height}, above --max-pixels {spec.max_pixels}"
                )
            if stream.codec_context.codec.intra_only:  # stills, MJPEG: no seek can miss a reference
                stream.codec_context.options = {"err_detect": "explode"}
            return decode(container, stream)
    except SampleError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError, ZeroDivisionError, OverflowError) as e:
        raise SampleError("decode_error", f"{path}: {type(e).__name__}: {e}") from None


def _check_frame(frame, path: str) -> None:
    if frame.is_corrupt:
        raise SampleError(
            "decode_error",
            f"{path}: damaged data in the frame at pts {frame.pts} (the decoder "
            f"concealed errors: it would be stored as garbage)",
        )


def _drain(stream, path: str, frames_iter) -> None:
    """Check the frames the decoder holds back before we leave a decode run (seek, or done). With B-frames
    a stored frame can be predicted from a later frame that was decoded before it but is output after it:
    its corrupt flag only shows once it is output. Draining decodes nothing new; the next seek resets."""
    try:
        held = stream.codec_context.decode(None)
    except EOFError:
        # the run reached the end of the file: container.decode has flushed the decoder already (a second
        # flush is an error) and holds what it gave back; the rest of that iterator is those frames
        held = frames_iter if frames_iter is not None else ()
    for frame in held:
        _check_frame(frame, path)


def _quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that make the frame upright (display matrix, as ffmpeg's autorotate;
    other angles round to the nearest quarter turn, as ffmpeg does)."""
    rotation = frame.rotation
    return int(round(rotation / 90.0)) % 4 if rotation else 0


def _encode(frame, spec: FrameSpec) -> tuple[bytes, int, int]:
    w, h = resized_size(frame.width, frame.height, spec.short_side)
    rgb = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
    turns = _quarter_turns(frame)
    if turns:
        rgb = np.ascontiguousarray(np.rot90(rgb, turns))
        h, w = rgb.shape[:2]
    return simplejpeg.encode_jpeg(rgb, quality=spec.quality, colorspace="RGB", colorsubsampling="420"), w, h


def _upright_size(frame, width: int, height: int) -> tuple[int, int, int]:
    """(width, height, degrees turned counter-clockwise) of the source as displayed."""
    turns = _quarter_turns(frame)
    return (height, width, turns * 90) if turns % 2 else (width, height, turns * 90)


def _decode_image(container, stream, spec: FrameSpec, path: str) -> Decoded:
    for frame in container.decode(stream):
        _check_frame(frame, path)
        jpeg, w, h = _encode(frame, spec)
        width, height, rotation = _upright_size(frame, frame.width, frame.height)
        meta = {
            "frame_indices": [0],
            "frame_timestamps": [0.0],
            "duration": None,
            "fps": None,
            "width": width,
            "height": height,
            "rotation": rotation,
        }
        return Decoded([jpeg], meta)
    raise SampleError("decode_error", f"{path}: no decodable image data")


def _index_packets(container, stream, path: str) -> tuple[list[int], list[int], int]:
    """(pts of every frame in presentation order, pts of keyframes sorted, end pts of the last frame) from
    one demux pass."""
    pts, keys = [], []
    end = None
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None:  # flush packets at the end carry no frame
            continue
        pts.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
        if packet.duration:
            end = packet.pts + packet.duration if end is None else max(end, packet.pts + packet.duration)
    if not pts:
        raise SampleError("decode_error", f"{path}: the video stream holds no frames")
    pts.sort()
    keys.sort()
    declared = stream.frames
    if declared and len(pts) < declared:
        raise SampleError("decode_error", f"{path}: truncated, {len(pts)} of {declared} frames present")
    if end is None or end <= pts[-1]:
        # no packet durations: the last frame lasts as long as the typical gap between frames (0 if one frame)
        gaps = [b - a for a, b in zip(pts, pts[1:]) if b > a]
        end = pts[-1] + (int(statistics.median(gaps)) if gaps else 0)
    return pts, keys, end


def _decode_frames(container, stream, frame_pts, key_pts, targets, spec: FrameSpec, path: str):
    """({pts: jpeg} of the frames at `targets` (sorted pts), upright size) in one forward decode: a seek
    only to a keyframe beyond the current position (or back, for a target already passed)."""
    upright = None
    decoded: dict[int, bytes] = {}
    frames_iter = None
    position = None  # pts of the last decoded frame, None before the first seek
    for target in targets:
        if target in decoded:
            continue
        k = bisect.bisect_right(key_pts, target) - 1
        keyframe = key_pts[k] if k >= 0 else frame_pts[0]
        if frames_iter is None or position is None or keyframe > position or target <= position:
            if frames_iter is not None:
                _drain(stream, path, frames_iter)
            container.seek(keyframe, stream=stream, backward=True, any_frame=False)
            frames_iter = container.decode(stream)
            position = None
        for frame in frames_iter:
            if frame.pts is None:
                raise SampleError("decode_error", f"{path}: decoder returned a frame without a timestamp")
            position = frame.pts
            # damage in any frame decoded since the keyframe can carry into the frames predicted from it
            _check_frame(frame, path)
            if frame.pts >= target:
                # an exact match is the norm; if a decoder drops a frame, the next one stands in
                decoded[target] = _encode(frame, spec)[0]
                upright = upright or _upright_size(frame, stream.codec_context.width, stream.codec_context.height)
                break
        else:
            raise SampleError("decode_error", f"{path}: stream ended before frame at pts {target}")
    _drain(stream, path, frames_iter)
    return decoded, upright


def _timing(stream, frame_pts, end_pts) -> tuple[float, float | None]:
    """(duration in seconds, frames per second) from the frames present, never from the header (which can
    lie)."""
    duration = (end_pts - frame_pts[0]) * float(stream.time_base)
    if duration > 0:
        return duration, len(frame_pts) / duration
    return duration, float(stream.average_rate) if stream.average_rate else None


def _decode_video(container, stream, spec: FrameSpec, path: str) -> Decoded:
    frame_pts, key_pts, end_pts = _index_packets(container, stream, path)
    n = len(frame_pts)
    indices = segment_midpoints(n, spec.frames)
    targets = sorted(set(frame_pts[i] for i in indices))
    tb = float(stream.time_base)
    start = frame_pts[0]
    decoded, upright = _decode_frames(container, stream, frame_pts, key_pts, targets, spec, path)
    duration, fps = _timing(stream, frame_pts, end_pts)
    width, height, rotation = upright
    meta = {
        "frame_indices": indices,
        "frame_timestamps": [round((frame_pts[i] - start) * tb, 6) for i in indices],
        "duration": round(duration, 6),
        "fps": round(fps, 6) if fps else None,
        "width": width,
        "height": height,
        "rotation": rotation,
        "num_source_frames": n,
    }
    return Decoded([decoded[frame_pts[i]] for i in indices], meta)


def _decode_spans(container, stream, spans, spec: FrameSpec, path: str) -> list:
    frame_pts, key_pts, end_pts = _index_packets(container, stream, path)
    tb = float(stream.time_base)
    times = [(p - frame_pts[0]) * tb for p in frame_pts]
    frame_ms = [round(t, 3) for t in times]
    duration, fps = _timing(stream, frame_pts, end_pts)
    video_end = round(duration, 3)
    picks: list = []  # per span: (indices, end used) or (reason, detail)
    for start, end in spans:
        if start >= video_end:
            picks.append(
                ("span_out_of_range", f"{path}: the span starts at {start:g} s, the video ends at {duration:g} s")
            )
        else:
            end_used = min(end, video_end)  # a span past the end is clipped to it (docs/SHARDS.md)
            picks.append((span_frame_indices(frame_ms, start, end_used, spec.frames), end_used))
    wanted = sorted({frame_pts[i] for pick in picks if isinstance(pick[0], list) for i in pick[0]})
    decoded, upright = (
        _decode_frames(container, stream, frame_pts, key_pts, wanted, spec, path) if wanted else ({}, None)
    )
    results = []
    for (start, end), pick in zip(spans, picks):
        if not isinstance(pick[0], list):
            results.append(pick)
            continue
        indices, end_used = pick
        width, height, rotation = upright
        meta = {
            "frame_indices": indices,
            # from the span's start; a span shorter than a frame shows, from its start, a frame begun before it
            "frame_timestamps": [round(max(0.0, times[i] - start), 6) for i in indices],
            "duration": round(end_used - start, 6),
            "fps": round(fps, 6) if fps else None,
            "width": width,
            "height": height,
            "rotation": rotation,
            "num_source_frames": len(frame_pts),
            "span": [start, end_used],
            "span_end_clipped": end_used < end,
            "video_duration": round(duration, 6),
        }
        results.append(Decoded([decoded[frame_pts[i]] for i in indices], meta))
    return results
