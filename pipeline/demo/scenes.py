"""The demo's scenes: captioned clips of coloured shapes that move, drawn with numpy.

The built-in data of `make demo` (docs/DEMO.md). Each clip shows one shape (square, triangle, cross, bar) of
one colour on a textured background, doing one of eight motions (left, right, up, down, grow, shrink,
rotate, still); its caption names all three ("a red square moves to the left"). An image set (single
frames, captions about shape and colour only) plays the part CC-3M plays beside WebVid.

Why one frame cannot tell the motion: every motion is a path through time t in [-1/2, 1/2] (0 is the
centre of the frames make-shards stores), and opposite motions are the same path run backwards: x(t) =
x0 - D t for "left", x0 + D t for "right", with x0 drawn independently of the direction. Frames are stored
at times symmetric about 0, so the frame at t of a "left" clip has exactly the distribution of the frame at
-t of a "right" clip: one frame, without its time, is equally consistent with both. Clips that do not move
along an axis (in size, in angle) still get a fixed offset D u (size factor, angle) with u ~ U(-1/2, 1/2),
the same spread a moving clip covers over time, so "still" and "rotate" are no easier to tell from one frame
either. Four frames in order show the direction.

Why the angle stays near upright: a ViT trained from scratch learns shape far more slowly when shapes turn
freely (the demo's video model classifying the four shapes, supervised, 1000 steps: 41 % held out with the
free angles and smaller shapes of fit-demo/2, 76 % as drawn here; bench/demo_shape.py, docs/DEMO.md), and
shape is what the search query needs besides colour and motion. So angles stay within ANGLE_SPREAD + SPIN / 2
of upright.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from shard_tools.sampling import segment_midpoints

SHAPES = ("square", "triangle", "cross", "bar")
COLOURS = {
    "red": (222, 38, 38),
    "green": (40, 186, 64),
    "blue": (48, 92, 232),
    "yellow": (238, 212, 40),
    "purple": (158, 58, 204),
    "orange": (246, 138, 28),
}
MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "rotate", "still")

# Caption grammar: "{subject} {motion phrase}". The first phrase of each motion is the canonical one, used
# for every test caption so queries are stable ("a red square moves to the left"); training captions draw
# from all of them.
MOTION_PHRASES = {
    "left": ("moves to the left", "slides to the left", "moves left", "travels leftwards"),
    "right": ("moves to the right", "slides to the right", "moves right", "travels rightwards"),
    "up": ("moves up", "slides upwards", "rises", "goes up"),
    "down": ("moves down", "slides downwards", "sinks", "goes down"),
    "grow": ("grows", "gets bigger", "expands", "grows larger"),
    "shrink": ("shrinks", "gets smaller", "contracts", "shrinks down"),
    "rotate": ("rotates", "spins", "turns around", "spins in place"),
    "still": ("stands still", "stays in place", "does not move", "stays still"),
}
SUBJECTS = ("{a} {colour} {shape}", "the {colour} {shape}", "{a} {colour} {shape}", "one {colour} {shape}")
IMAGE_CAPTIONS = (
    "{a} {colour} {shape}",
    "a picture of {a} {colour} {shape}",
    "{a} {colour} {shape} on a plain background",
    "a single {colour} {shape}",
)

# Motion amplitudes over the clip (t from -1/2 to 1/2), relative to the frame size.
TRAVEL = 0.30  # translation distance
GROWTH = math.log(1.8)  # size ratio end / start of grow and shrink
SPIN = math.radians(50)  # rotation; below every shape's symmetry angle (bar: 180, square/cross: 90)
ANGLE_SPREAD = math.radians(8)  # the angle at t = 0 is uniform in +-ANGLE_SPREAD
HALF_SIZE = (0.125, 0.16)  # a shape's half-size at t = 0 (log-uniform)
EXTENT = {"square": math.sqrt(2), "triangle": 1.25, "cross": 1.25, "bar": 1.44}  # bounding radius / half-size

SPLIT_CODES = {"train": 1, "test": 2, "images": 3}


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one sample; a pure function of (seed, split, index)."""

    key: str
    split: str
    shape: str
    colour: str
    motion: str  # "" for images
    caption: str
    rgb: tuple[int, int, int]
    background: dict = field(hash=False)
    centre: tuple[float, float]  # (x, y) at t = 0, pixels
    half_size: float  # at t = 0, pixels
    angle: float  # at t = 0, radians
    offset_axis: int  # for clips that do not translate: 0 = x, 1 = y
    offset: float  # u in [-1/2, 1/2]: fixed position offset (travel * u) / log-size offset
    size_offset: float
    angle_offset: float  # u in [-1/2, 1/2]: fixed angle offset (SPIN * u) of samples that do not spin
    spin_sign: int  # rotation direction of "rotate" clips (the caption does not say which)

    @property
    def held_out(self) -> bool:
        return self.motion != "" and held_out_motion(self.shape, self.colour) == self.motion


def held_out_motion(shape: str, colour: str) -> str:
    """The motion that never appears in training for this (shape, colour): each motion for 3 of 24 pairs.

    The offset keeps "a red square moves to the left" (the README's and the search test's query) a
    combination seen in training: its held-out test clips are new clips of a known combination."""
    pair = SHAPES.index(shape) * len(COLOURS) + list(COLOURS).index(colour)
    return MOTIONS[(3 * pair + 1) % len(MOTIONS)]


def training_triples() -> list[tuple[str, str, str]]:
    return [(s, c, m) for s in SHAPES for c in COLOURS for m in MOTIONS if held_out_motion(s, c) != m]


def all_triples() -> list[tuple[str, str, str]]:
    return [(s, c, m) for s in SHAPES for c in COLOURS for m in MOTIONS]


def motion_caption(colour: str, shape: str, motion: str, rng: np.random.Generator | None = None) -> str:
    """The canonical caption without `rng`; a random phrasing with it."""
    if rng is None:
        return f"{_article(colour)} {colour} {shape} {MOTION_PHRASES[motion][0]}"
    subject = SUBJECTS[rng.integers(len(SUBJECTS))].format(a=_article(colour), colour=colour, shape=shape)
    return f"{subject} {MOTION_PHRASES[motion][rng.integers(len(MOTION_PHRASES[motion]))]}"


def image_caption(colour: str, shape: str, rng: np.random.Generator) -> str:
    return IMAGE_CAPTIONS[rng.integers(len(IMAGE_CAPTIONS))].format(a=_article(colour), colour=colour, shape=shape)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# ---------------------------------------------------------------------------------------------- scenes


def _background(rng: np.random.Generator) -> dict:
    """Two dull colours (low saturation, mid-dark) blended along a random direction, plus a faint texture."""

    def dull():
        grey = rng.uniform(40, 150)
        return [float(np.clip(grey + rng.uniform(-28, 28), 0, 255)) for _ in range(3)]

    return {
        "colours": [dull(), dull()],
        "direction": float(rng.uniform(0, 2 * math.pi)),
        "texture": str(rng.choice(["plain", "stripes", "checker", "noise"])),
        "period": float(rng.uniform(6, 16)),
        "amplitude": float(rng.uniform(6, 18)),
        "noise_seed": int(rng.integers(2**31)),
    }


def make_scene(seed: int, split: str, index: int, size: int, shape: str, colour: str, motion: str) -> Scene:
    """Draw the nuisances of one sample (background, position, size, angle) from its own generator."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    if split == "images":
        caption = image_caption(colour, shape, rng)
    elif split == "test":
        caption = motion_caption(colour, shape, motion)
    else:
        caption = motion_caption(colour, shape, motion, rng)
    half = size * math.exp(rng.uniform(math.log(HALF_SIZE[0]), math.log(HALF_SIZE[1])))
    offset_axis = int(rng.integers(2))
    offset, size_offset = float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.5, 0.5))
    angle_offset = float(rng.uniform(-0.5, 0.5))
    # the centre range keeps the whole path in frame; it depends on which axis moves, never on the direction
    radius = half * math.exp(GROWTH / 2) * EXTENT[shape] + 1
    travel_axis = {"left": 0, "right": 0, "up": 1, "down": 1}.get(motion, offset_axis)
    centre = []
    for axis in (0, 1):
        reach = radius + (TRAVEL * size / 2 if axis == travel_axis and split != "images" else 0)
        if 2 * reach > size:
            raise ValueError(
                f"demo frames of {size} px are too small to keep a {shape} of half-size {half:.1f} px "
                f"in frame; use --size 32 or more"
            )
        centre.append(float(rng.uniform(reach, size - reach)))
    base = np.array(COLOURS[colour]) + rng.integers(-14, 15, size=3)
    return Scene(
        key=f"demo_{split}_{index:06d}",
        split=split,
        shape=shape,
        colour=colour,
        motion=motion,
        caption=caption,
        rgb=tuple(int(v) for v in np.clip(base, 0, 255)),
        background=_background(rng),
        centre=(centre[0], centre[1]),
        half_size=half,
        angle=float(rng.uniform(-ANGLE_SPREAD, ANGLE_SPREAD)),
        offset_axis=offset_axis,
        offset=offset,
        size_offset=size_offset,
        angle_offset=angle_offset,
        spin_sign=int(rng.choice([-1, 1])),
    )


def plan_scenes(seed: int, split: str, count: int, size: int) -> list[Scene]:
    """The samples of a split. test: every triple once (count is ignored); train: the training triples
    cycled, grouped by (shape, colour) in a seeded order; images: (shape, colour) pairs cycled."""
    order_rng = np.random.default_rng([seed, SPLIT_CODES[split], 0, 1])
    if split == "test":
        triples = all_triples()
    elif split == "train":
        # grouped by (shape, colour): a pair's seen motions sit next to each other (in a random order), so a
        # batch read with a small shuffle buffer holds clips that differ only in motion -- the negatives that
        # teach motion (with full shuffling a clip meets ~1.3 of them in a batch of 32)
        seen = training_triples()
        groups = [[t for t in seen if t[:2] == (s, c)] for s in SHAPES for c in COLOURS]
        triples = []
        while len(triples) < count:
            for i in order_rng.permutation(len(groups)):
                triples += [groups[i][j] for j in order_rng.permutation(len(groups[i]))]
        triples = triples[:count]
    elif split == "images":
        pairs = [(s, c, "") for s in SHAPES for c in COLOURS]
        triples = []
        while len(triples) < count:
            triples += [pairs[i] for i in order_rng.permutation(len(pairs))]
        triples = triples[:count]
    else:
        raise ValueError(f"unknown demo split {split!r} (use train, test or images)")
    return [make_scene(seed, split, i, size, *t) for i, t in enumerate(triples)]


# ------------------------------------------------------------------------------------------- rendering


def clip_times(num_frames: int, stored_frames: int) -> np.ndarray:
    """Time of each rendered frame, t in [-1/2, 1/2], zero at the centre of the frames make-shards stores
    (`segment_midpoints`), so the stored frames sit symmetrically about t = 0."""
    stored = segment_midpoints(num_frames, stored_frames)
    centre = (stored[0] + stored[-1]) / 2
    span = max(stored[-1] - stored[0], 1)
    return (np.arange(num_frames) - centre) / span


def render_background(bg: dict, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d = math.cos(bg["direction"]) * (xx - size / 2) + math.sin(bg["direction"]) * (yy - size / 2)
    w = np.clip(d / size + 0.5, 0, 1)[..., None]
    img = (1 - w) * np.array(bg["colours"][0], np.float32) + w * np.array(bg["colours"][1], np.float32)
    period, amp = bg["period"], bg["amplitude"]
    if bg["texture"] == "stripes":
        img += amp * np.sign(np.sin(2 * math.pi * (xx + yy) / period))[..., None] / 2
    elif bg["texture"] == "checker":
        img += amp * (((xx // period + yy // period) % 2) - 0.5)[..., None]
    elif bg["texture"] == "noise":
        img += amp * (np.random.default_rng(bg["noise_seed"]).random((size, size, 1), np.float32) - 0.5)
    return img


def shape_distance(shape: str, x: np.ndarray, y: np.ndarray, half: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) of points (x, y) in the shape's own frame."""
    if shape == "square":
        return np.maximum(abs(x), abs(y)) - half
    if shape == "bar":
        return np.maximum(abs(x) - 1.35 * half, abs(y) - 0.5 * half)
    if shape == "cross":
        arm, width = 1.2 * half, 0.36 * half
        return np.minimum(np.maximum(abs(x) - arm, abs(y) - width), np.maximum(abs(x) - width, abs(y) - arm))
    if shape == "triangle":
        inradius = 1.25 * half / 2
        dists = [
            math.cos(a) * x + math.sin(a) * y
            for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)
        ]
        return np.maximum(np.maximum(dists[0], dists[1]), dists[2]) - inradius
    raise ValueError(f"unknown shape {shape!r}")


def scene_state(scene: Scene, t: float, size: int) -> tuple[float, float, float, float]:
    """(x, y, half-size, angle) of the shape at time t."""
    x, y = scene.centre
    travel = TRAVEL * size
    direction = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}.get(scene.motion)
    if direction:
        x, y = x + direction[0] * travel * t, y + direction[1] * travel * t
    elif scene.split != "images":
        if scene.offset_axis == 0:
            x += travel * scene.offset
        else:
            y += travel * scene.offset
    growth = {"grow": t, "shrink": -t}.get(scene.motion, scene.size_offset)
    half = scene.half_size * math.exp(GROWTH * growth)
    spin = scene.spin_sign * t if scene.motion == "rotate" else scene.angle_offset
    angle = scene.angle + SPIN * spin
    return x, y, half, angle


def render_frames(scene: Scene, size: int, times: np.ndarray) -> np.ndarray:
    """uint8 [len(times), size, size, 3]."""
    background = render_background(scene.background, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    rgb = np.array(scene.rgb, np.float32)
    frames = np.empty((len(times), size, size, 3), np.uint8)
    for i, t in enumerate(times):
        x, y, half, angle = scene_state(scene, float(t), size)
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = xx - x, yy - y
        alpha = np.clip(0.5 - shape_distance(scene.shape, c * dx + s * dy, -s * dx + c * dy, half), 0, 1)[..., None]
        frames[i] = np.clip(background * (1 - alpha) + rgb * alpha + 0.5, 0, 255).astype(np.uint8)
    return frames
