"""The demo data generator (pipeline/demo/scenes.py, pipeline/demo/render.py): splits, caption grammar,
determinism, the one-frame ambiguity of motion, and real mp4s through ffmpeg."""

import dataclasses
import re
from collections import Counter

import av
import numpy as np
import pytest

from pipeline.demo import render
from pipeline.demo import scenes as demo
from shard_tools.sampling import segment_midpoints

SIZE = 64
CAPTION = re.compile(r"^(?:an?|the|one) (?P<colour>\w+) (?P<shape>\w+) (?P<phrase>.+)$")


def parse_caption(caption: str) -> tuple[str, str, str]:
    m = CAPTION.match(caption)
    assert m, caption
    motions = [k for k, phrases in demo.MOTION_PHRASES.items() if m["phrase"] in phrases]
    assert len(motions) == 1, caption
    return m["shape"], m["colour"], motions[0]


def test_splits_hold_out_one_motion_per_pair_and_test_covers_every_triple():
    held = Counter(demo.held_out_motion(s, c) for s in demo.SHAPES for c in demo.COLOURS)
    assert set(held) == set(demo.MOTIONS) and set(held.values()) == {3}
    test = demo.plan_scenes(0, "test", 0, SIZE)
    assert sorted((s.shape, s.colour, s.motion) for s in test) == sorted(demo.all_triples())
    assert sum(s.held_out for s in test) == 24
    train = demo.plan_scenes(0, "train", 500, SIZE)
    assert len(train) == 500 and not any(s.held_out for s in train)
    counts = Counter((s.shape, s.colour, s.motion) for s in train)
    assert set(counts) <= set(demo.training_triples()) and max(counts.values()) - min(counts.values()) <= 1
    # every (shape, colour) is seen in training with the other seven motions, every motion with every shape
    assert {(s, c) for s, c, _ in counts} == {(s, c) for s in demo.SHAPES for c in demo.COLOURS}
    assert {(s, m) for s, _, m in counts} == {(s, m) for s in demo.SHAPES for m in demo.MOTIONS}
    keys = [s.key for s in train + test + demo.plan_scenes(0, "images", 50, SIZE)]
    assert len(set(keys)) == len(keys) and all("." not in k for k in keys)


def test_caption_grammar():
    for scene in demo.plan_scenes(3, "train", 300, SIZE):
        assert parse_caption(scene.caption) == (scene.shape, scene.colour, scene.motion)
        assert not re.search(r"\ba [aeiou]", scene.caption), scene.caption  # "an orange", never "a orange"
    test = demo.plan_scenes(3, "test", 0, SIZE)
    assert len({s.caption for s in test}) == len(test)  # canonical and unique
    assert demo.motion_caption("red", "square", "left") == "a red square moves to the left"
    assert demo.motion_caption("orange", "cross", "grow") == "an orange cross grows"
    motion_words = {w for phrases in demo.MOTION_PHRASES.values() for p in phrases for w in p.split()}
    for scene in demo.plan_scenes(3, "images", 100, SIZE):
        words = scene.caption.split()
        assert scene.colour in words and scene.shape in words and scene.motion == ""
        assert not (set(words) & motion_words - {"a", "the", "in", "to", "place"}), scene.caption


def test_scenes_and_pixels_are_a_function_of_the_seed():
    times = demo.clip_times(16, 8)
    a = demo.plan_scenes(7, "train", 20, SIZE)
    b = demo.plan_scenes(7, "train", 20, SIZE)
    c = demo.plan_scenes(8, "train", 20, SIZE)
    assert a == b and a != c
    assert np.array_equal(demo.render_frames(a[5], SIZE, times), demo.render_frames(b[5], SIZE, times))
    # sample i does not depend on how many samples the split has
    assert demo.plan_scenes(7, "images", 40, SIZE)[:10] == demo.plan_scenes(7, "images", 10, SIZE)


@pytest.mark.parametrize("stored", [4, 8])
def test_stored_frames_sit_symmetrically_about_time_zero(stored):
    times = demo.clip_times(16, stored)
    picked = times[segment_midpoints(16, stored)]
    assert np.allclose(picked, -picked[::-1]) and picked[0] == -0.5 and picked[-1] == 0.5


@pytest.mark.parametrize(
    "motion,opposite", [("left", "right"), ("up", "down"), ("grow", "shrink"), ("rotate", "rotate")]
)
def test_one_frame_cannot_tell_opposite_motions_apart(motion, opposite):
    """A clip and the same scene with the opposite motion are each other's time reversal, frame for frame,
    on the stored frames: any single stored frame is exactly as likely under either caption."""
    times = demo.clip_times(16, 8)
    stored = segment_midpoints(16, 8)
    for scene in [s for s in demo.plan_scenes(1, "train", 200, SIZE) if s.motion == motion][:3]:
        mirror = dataclasses.replace(scene, motion=opposite, spin_sign=-scene.spin_sign)
        forward = demo.render_frames(scene, SIZE, times[stored])
        backward = demo.render_frames(mirror, SIZE, times[stored][::-1])
        assert np.array_equal(forward, backward)
        assert not np.array_equal(forward[0], forward[-1])  # ... while the clip does change


def test_angles_stay_near_upright_and_only_rotate_clips_turn():
    """Shapes stay within ANGLE_SPREAD + SPIN / 2 of upright (a from-scratch ViT learns shape slowly when they
    turn freely); samples that do not spin get a fixed angle offset of the spread a spinning clip covers."""
    limit = demo.ANGLE_SPREAD + demo.SPIN / 2
    scenes = demo.plan_scenes(3, "train", 200, SIZE) + demo.plan_scenes(3, "images", 50, SIZE)
    offsets = []
    for scene in scenes:
        angles = np.array([demo.scene_state(scene, t, SIZE)[3] for t in (-0.5, 0.0, 0.5)])
        assert np.abs(angles).max() <= limit + 1e-9, scene
        if scene.motion == "rotate":
            assert angles[2] - angles[0] == pytest.approx(scene.spin_sign * demo.SPIN)
        else:
            assert angles[0] == angles[1] == angles[2]
            offsets.append(angles[1] - scene.angle)
    # the offsets cover the spinning range, not just a corner of it
    assert min(offsets) < -0.3 * demo.SPIN and max(offsets) > 0.3 * demo.SPIN


def _mask_stats(frame: np.ndarray, rgb) -> tuple[float, float, int]:
    mask = np.abs(frame.astype(int) - np.array(rgb)).sum(-1) < 40
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean(), int(mask.sum())


def test_four_frames_show_the_motion():
    times = demo.clip_times(16, 4)[segment_midpoints(16, 4)]
    for scene in demo.plan_scenes(2, "test", 0, SIZE):
        stats = np.array([_mask_stats(f, scene.rgb) for f in demo.render_frames(scene, SIZE, times)])
        x, y, area = stats[:, 0], stats[:, 1], stats[:, 2]
        steps = {
            "left": -np.diff(x),
            "right": np.diff(x),
            "up": -np.diff(y),
            "down": np.diff(y),
            "grow": np.diff(area),
            "shrink": -np.diff(area),
        }.get(scene.motion)
        if steps is not None:
            assert (steps > 0).all(), (scene.caption, stats)
        else:  # rotate and still keep their place and size
            assert np.ptp(x) < 1.5 and np.ptp(y) < 1.5, (scene.caption, stats)
            assert np.ptp(area) < 0.2 * area.mean(), (scene.caption, stats)


def test_encode_clips_writes_one_real_mp4_per_clip(tmp_path):
    spec = render.DemoSpec(size=SIZE)
    times = demo.clip_times(spec.num_frames, spec.stored_frames)
    scenes = demo.plan_scenes(0, "train", 7, SIZE)
    paths = render.encode_clips(scenes, tmp_path / "clips", SIZE, spec.num_frames, spec.fps, times)
    assert [p.name for p in paths] == [f"{s.key}.mp4" for s in scenes]
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == sorted(p.name for p in paths)  # no leftovers
    for scene, path in zip(scenes, paths):
        with av.open(str(path)) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        assert frames.shape == (spec.num_frames, SIZE, SIZE, 3)
        rendered = demo.render_frames(scene, SIZE, times).astype(int)
        assert np.abs(frames.astype(int) - rendered).mean() < 6  # H.264 at crf 18: close, not exact


def test_demo_data_goes_through_the_csv_path(tmp_path):
    import json
    import tarfile

    from launch.demo_data import main

    out = tmp_path / "demo"
    args = ["--out", str(out), "--train-clips", "16", "--images", "8", "--size", "32", "--workers", "0"]
    assert main(args) == 0
    counts = {}
    for split, kind, frames in (("train", "video", 8), ("test", "video", 8), ("images", "image", 1)):
        manifest = json.loads((out / "shards" / split / "manifest.json").read_text())
        assert manifest["kind"] == kind and manifest["frames_per_sample"] == frames and not manifest["failed"]
        counts[split] = manifest["total_samples"]
        with tarfile.open(out / "shards" / split / manifest["shards"][0]["path"]) as tar:
            names = tar.getnames()
            meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
        assert sum(n.startswith(meta["key"] + ".") and n.endswith(".jpg") for n in names) == frames
        assert meta["width"] == meta["height"] == 32 and set(meta["extra"]) >= {"shape", "colour", "motion"}
        if kind == "video":
            assert meta["num_frames"] == 8 and meta["frame_indices"] == segment_midpoints(16, 8)
    assert counts == {"train": 16, "test": 192, "images": 8}
    stamp = (out / "demo.json").stat().st_mtime_ns
    assert main(args) == 0 and (out / "demo.json").stat().st_mtime_ns == stamp  # same spec: reused as is
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("not a demo folder")
    assert main(["--out", str(tmp_path / "other"), "--train-clips", "4", "--images", "4", "--workers", "0"]) == 2
    assert (tmp_path / "other" / "precious.txt").exists()
