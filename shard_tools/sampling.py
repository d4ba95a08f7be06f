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
    """(w, h) to store a width x height source at: never upscaled, never a size the source lacks.

    A source whose short side is at most `short_side` keeps its exact size (odd sizes and 1x1 included;
    JPEG 4:2:0 pads odd sizes internally). A larger one is scaled so its short side is `short_side`, both
    sides rounded to the nearest even number (4:2:0 chroma planes then cover whole pixels), but never above
    the source's own side.
    """
    if min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    w = min(width, max(2, int(round(width * scale / 2)) * 2))
    h = min(height, max(2, int(round(height * scale / 2)) * 2))
    return w, h
