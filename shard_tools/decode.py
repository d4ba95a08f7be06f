"""Decode the K stored frames of one clip (or the single frame of an image) with PyAV, then JPEG-encode.

Why PyAV + simplejpeg: docs/DECODERS.md. The strategy, per file:
1. one demux pass (no decoding) lists every video packet's pts and keyframe flag, which gives the true
   frame count in presentation order, whatever the container's header claims;
2. the wanted frames are decoded in order, seeking to the keyframe before a wanted frame only when that
   keyframe lies beyond the current decode position (short GOPs skip most of the clip, long GOPs decode
   straight through);
3. each wanted frame is converted to RGB and resized in the decoder (swscale, area filter), then encoded
   with simplejpeg.
Every failure raises `SampleError(reason, detail)`; the reasons are listed in docs/SHARDS.md.
"""
import bisect
import os
from dataclasses import dataclass, field

import av
import simplejpeg

from shard_tools.sampling import resized_size, segment_midpoints


class SampleError(Exception):
    """One input row could not become a sample; `reason` is a short stable code, `detail` says why."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FrameSpec:
    """What to store per sample; part of the options that decide the shards' bytes."""
    frames: int = 8                 # K for videos; images always store 1
    short_side: int = 256
    quality: int = 90
    max_pixels: int = 8192 * 4320   # refuse sources above this (8K); guards memory in the worker


@dataclass
class Decoded:
    jpegs: list[bytes]
    meta: dict = field(default_factory=dict)   # frame_indices, frame_timestamps, duration, fps, width, height


def decode_sample(path: str, kind: str, spec: FrameSpec) -> Decoded:
    """Decode `path` as a video (K frames) or an image (1 frame). Raises SampleError on any failure."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise SampleError("missing_file", f"{path}: {e.strerror}") from None
    if size == 0:
        raise SampleError("empty_file", f"{path} has 0 bytes")
    try:
        container = av.open(path, mode="r")
    except av.error.FFmpegError as e:
        raise SampleError("not_a_video" if kind == "video" else "not_an_image",
                          f"{path}: FFmpeg cannot open it ({e.strerror or e})") from None
    try:
        with container:
            if not container.streams.video:
                raise SampleError("no_video_stream",
                                  f"{path} has no video stream ({len(container.streams.audio)} audio streams)")
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1     # parallelism comes from worker processes
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > spec.max_pixels:
                raise SampleError("too_many_pixels",
                                  f"{path} is {width}x{height}, above --max-pixels {spec.max_pixels}")
            if kind == "image":
                return _decode_image(container, stream, spec, path)
            return _decode_video(container, stream, spec, path)
    except SampleError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError, ZeroDivisionError, OverflowError) as e:
        raise SampleError("decode_error", f"{path}: {type(e).__name__}: {e}") from None


def _encode(frame, spec: FrameSpec) -> tuple[bytes, int, int]:
    w, h = resized_size(frame.width, frame.height, spec.short_side)
    rgb = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
    return simplejpeg.encode_jpeg(rgb, quality=spec.quality, colorspace="RGB", colorsubsampling="420"), w, h


def _decode_image(container, stream, spec: FrameSpec, path: str) -> Decoded:
    for frame in container.decode(stream):
        jpeg, w, h = _encode(frame, spec)
        meta = {"frame_indices": [0], "frame_timestamps": [0.0], "duration": None, "fps": None,
                "width": frame.width, "height": frame.height}
        return Decoded([jpeg], meta)
    raise SampleError("decode_error", f"{path}: no decodable image data")


def _index_packets(container, stream, path: str) -> tuple[list[int], list[int]]:
    """(pts of every frame in presentation order, pts of keyframes sorted) from one demux pass."""
    pts, keys = [], []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None:   # flush packets at the end carry no frame
            continue
        pts.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
    if not pts:
        raise SampleError("decode_error", f"{path}: the video stream holds no frames")
    pts.sort()
    keys.sort()
    declared = stream.frames
    if declared and len(pts) < declared:
        raise SampleError("decode_error", f"{path}: truncated, {len(pts)} of {declared} frames present")
    return pts, keys


def _decode_video(container, stream, spec: FrameSpec, path: str) -> Decoded:
    frame_pts, key_pts = _index_packets(container, stream, path)
    n = len(frame_pts)
    indices = segment_midpoints(n, spec.frames)
    targets = sorted(set(frame_pts[i] for i in indices))
    tb = float(stream.time_base)
    start = stream.start_time if stream.start_time is not None else frame_pts[0]

    decoded: dict[int, bytes] = {}
    frames_iter = None
    position = None          # pts of the last decoded frame, None before the first seek
    for target in targets:
        if target in decoded:
            continue
        k = bisect.bisect_right(key_pts, target) - 1
        keyframe = key_pts[k] if k >= 0 else frame_pts[0]
        if frames_iter is None or position is None or keyframe > position or target <= position:
            container.seek(keyframe, stream=stream, backward=True, any_frame=False)
            frames_iter = container.decode(stream)
            position = None
        for frame in frames_iter:
            if frame.pts is None:
                raise SampleError("decode_error", f"{path}: decoder returned a frame without a timestamp")
            position = frame.pts
            if frame.pts >= target:
                # an exact match is the norm; if a decoder drops a frame, the next one stands in
                decoded[target] = _encode(frame, spec)[0]
                break
        else:
            raise SampleError("decode_error", f"{path}: stream ended before frame at pts {target}")
    fps = float(stream.average_rate) if stream.average_rate else None
    if stream.duration is not None:
        duration = stream.duration * tb
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        duration = (frame_pts[-1] - start) * tb + (1.0 / fps if fps else 0.0)
    meta = {
        "frame_indices": indices,
        "frame_timestamps": [round((frame_pts[i] - start) * tb, 6) for i in indices],
        "duration": round(float(duration), 6),
        "fps": round(fps, 6) if fps else None,
        "width": stream.codec_context.width,
        "height": stream.codec_context.height,
        "num_source_frames": n,
    }
    return Decoded([decoded[frame_pts[i]] for i in indices], meta)
