"""Clips by time span: reading span times from tables and choosing a span's frames in its source video.

Times are read as float seconds from numbers or from `[H]H:MM:SS[.fff]`, `MM:SS[.fff]`, `SS[.fff]` strings
(LSMDC-style `HH.MM.SS.mmm` too); list cells (the Panda-70M layout) are Python literals in either quote
style, read with ast.literal_eval, never executed. Layouts, keys and the json fields: docs/SHARDS.md,
'Clips by time span'.
"""

import ast
import bisect
import math
import re

from shard_tools.sampling import segment_midpoints

_CLOCK = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")
_DOTTED = re.compile(r"^(\d{1,2})\.(\d{2})\.(\d{2})\.(\d{1,6})$")  # LSMDC ids: 00.00.49.560


def parse_seconds(value) -> float:
    """Seconds as a float from a number or a time string; ValueError naming the value when it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        clock = _CLOCK.match(text)
        dotted = _DOTTED.match(text)
        if clock:
            hours, minutes, secs = clock.groups()
            if int(minutes) >= 60 or float(secs) >= 60:
                raise ValueError(f"{value!r} is not a time (minutes and seconds must be below 60)")
            seconds = int(hours or 0) * 3600 + int(minutes) * 60 + float(secs)
        elif dotted:
            hours, minutes, secs, fraction = dotted.groups()
            seconds = int(hours) * 3600 + int(minutes) * 60 + float(f"{secs}.{fraction}")
        else:
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(f"{value!r} is not a time (seconds, or H:MM:SS.mmm / MM:SS)") from None
    else:
        raise ValueError(f"{str(value)[:40]!r} is not a time (a {type(value).__name__})")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a time (must be a finite number of seconds >= 0)")
    return seconds


def parse_span(start, end) -> tuple[float, float]:
    """(start, end) in seconds; ValueError when a time is unreadable or end <= start."""
    begin, finish = parse_seconds(start), parse_seconds(end)
    if finish <= begin:
        raise ValueError(f"span ends at {end!r}, not after its start {start!r}")
    return begin, finish


def literal_list(value, what: str) -> list:
    """A list cell: a list already (JSON lines, parquet) or a Python literal string of a list or tuple."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, str):
        raise ValueError(f"{what} is a {type(value).__name__}, not a list")
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"{what} is not a list literal: {value[:80]!r}") from None
    if not isinstance(parsed, (list, tuple)):
        raise ValueError(f"{what} is a {type(parsed).__name__}, not a list: {value[:80]!r}")
    return list(parsed)


def span_frame_indices(frame_ms: list[float], start: float, end: float, k: int) -> list[int]:
    """Source-frame indices of the K stored frames of the span [start, end) (seconds from the first frame).

    `frame_ms` are the frames' times in seconds from the first frame, ascending, rounded to the millisecond
    (the precision tables give spans in, so a frame at 5.005005 s starts the span '0:00:05.005'). The
    span's frames are those with a time in [start, end); their segment middles (sampling.segment_midpoints)
    are stored. A span shorter than one frame interval holds no frame start: it stores the frame on screen
    at `start`, K times. `start` must lie before the video's end (the caller fails the span otherwise)."""
    first, stop = bisect.bisect_left(frame_ms, start), bisect.bisect_left(frame_ms, end)
    if stop <= first:
        return [bisect.bisect_right(frame_ms, start) - 1] * k
    return [first + i for i in segment_midpoints(stop - first, k)]
