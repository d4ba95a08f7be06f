"""Which source frames a sample stores: the middle frame of each of K equal segments of the clip."""


def segment_midpoints(num_frames: int, k: int) -> list[int]:
    """Indices of the K stored frames of a clip with `num_frames` frames, in temporal order.

    For num_frames >= k this is the original's 'uniform' sampling exactly: segment boundaries are
    int(linspace(0, n, k + 1)), segment j covers [b_j, b_{j+1} - 1] and we take (start + end) // 2.
    A clip with fewer than k frames still gives k indices: the midpoint of each of k equal fractional
    segments, so frames repeat (a 1-frame clip stores frame 0 k times). `frame_indices` records this.
    """
    if num_frames < 1 or k < 1:
        raise ValueError(f"need num_frames >= 1 and k >= 1, got {num_frames}, {k}")
    if num_frames >= k:
        bounds = [int(j * num_frames / k) for j in range(k + 1)]
        return [(bounds[j] + bounds[j + 1] - 1) // 2 for j in range(k)]
    return [((2 * j + 1) * num_frames) // (2 * k) for j in range(k)]


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the short side equal to `short_side` (never upscaled), both sides even for 4:2:0 JPEG."""
    scale = min(1.0, short_side / min(width, height))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h
