"""Which of a sample's K stored frames to use, and decoding only those.

The shards store K frames per clip, the middle frame of each of K equal segments (docs/DESIGN.md). The
model wants T. Like the original's `sample_frames` (docs/ORIGINAL.md, 'Frame sampling'), the K stored
frames are cut into T equal groups (boundaries `linspace(0, K, T + 1)` cast to int) and one frame is taken
from each group:

- train ("rand"): a frame drawn uniformly from the whole group. The original drew from
  `range(start, end)` with an inclusive `end`, which never picks a group's last frame and fails on
  one-frame groups (docs/ORIGINAL.md, 'Bugs' 7); we fix both on purpose.
- eval ("uniform"): the middle of the group, `(start + end) // 2` with inclusive end, as the original.

Fewer stored frames than T (K < T, e.g. a T=8 run on K=4 shards): the clip still yields T frames in
temporal order, each stored frame repeated `T / K` times (index `floor(i * K / T)`), so every batch keeps
the shape [B, T, ...]. The original zero-padded instead (black frames with no mask, docs/ORIGINAL.md,
'Bugs' 8); repeating matches what make-shards does for clips with fewer decodable frames than K. The loader counts such
samples (`short` in its counters) so a misconfigured T shows up in the logs.
"""

import numpy as np
import simplejpeg


def frame_indices(stored: int, wanted: int, mode: str, rng: np.random.Generator | None = None) -> list[int]:
    """Indices into the `stored` frames of a sample, one per group, in temporal order."""
    if stored < 1 or wanted < 1:
        raise ValueError(f"need at least one stored and one wanted frame, got stored={stored} wanted={wanted}")
    if stored < wanted:
        return [i * stored // wanted for i in range(wanted)]
    bounds = [i * stored // wanted for i in range(wanted + 1)]  # linspace(0, K, T + 1).astype(int) in exact integers
    starts, ends = bounds[:-1], [b - 1 for b in bounds[1:]]  # inclusive ends; non-empty since stored >= wanted
    if mode == "uniform":
        return [(s + e) // 2 for s, e in zip(starts, ends)]
    if mode == "rand":
        if rng is None:
            raise ValueError("mode 'rand' needs a random generator")
        return [int(rng.integers(s, e + 1)) for s, e in zip(starts, ends)]
    raise ValueError(f"unknown frame sampling mode {mode!r} (use 'rand' or 'uniform')")


def decode_frames(jpegs: list[bytes]) -> np.ndarray:
    """Decode JPEG frames to one uint8 array [T, H, W, 3]; raises ValueError on corrupt or mismatched frames."""
    frames = [simplejpeg.decode_jpeg(data, colorspace="RGB") for data in jpegs]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"frames of one sample differ in size: {sorted(shapes)}")
    return np.stack(frames)
