"""make-shards on damaged and unusual media: damage fails the row as `decode_error` instead of becoming
garbage frames; sizes are never upscaled; rotation metadata is applied; durations come from the frames;
keys stay distinct. Every damaged file is made here, from clean renders."""

import io
import json

import av
import numpy as np
import pytest
import simplejpeg

import media
from shard_tools import cli
from shard_tools.decode import FrameSpec, SampleError, decode_sample
from shard_tools.rows import safe_key
from shard_tools.sampling import resized_size
from shard_tools.verify import verify
from shardcli import shards_argv


def outcome(path, kind="video", spec=FrameSpec(frames=8)):
    """("ok", frames as RGB arrays, meta) or ("failed", reason, detail)."""
    try:
        d = decode_sample(str(path), kind, spec)
    except SampleError as e:
        return ("failed", e.reason, e.detail)
    return ("ok", [simplejpeg.decode_jpeg(j) for j in d.jpegs], d.meta)


CLIPS = {
    "cavlc": {},  # x264 ultrafast: no B-frames
    # CABAC, B-frames (a stored frame can be predicted from a later one), open GOPs and seeks between them
    "cabac_bframes_open_gop": {"preset": "medium", "x264_params": "open-gop=1:bframes=3:keyint=12:scenecut=0"},
}


@pytest.fixture(scope="module", params=sorted(CLIPS))
def clean_clip(request, tmp_path_factory):
    path = media.render_clip(
        tmp_path_factory.mktemp("clip") / f"{request.param}.mp4",
        seconds=3,
        size=(160, 120),
        fps=10,
        **CLIPS[request.param],
    )
    return path, outcome(path)


def _ffmpeg_sees_damage(path) -> bool:
    """Whether FFmpeg, decoding every frame from the start with error detection on, reports damage."""
    try:
        with av.open(str(path)) as c:
            c.streams.video[0].codec_context.options = {"err_detect": "explode"}
            return any(f.is_corrupt for f in c.decode(video=0))
    except av.error.FFmpegError:
        return True


@pytest.mark.parametrize("mode", ["zero", "flip"])
def test_damaged_video_is_never_stored_as_garbage(clean_clip, tmp_path, mode):
    """Invariant, for damage in the middle of every packet of the clip: the row fails as decode_error, or
    every stored frame is exactly what the clean clip gives (the damage lay where no stored frame reads),
    or the damage is invisible to FFmpeg's own error detection (a flip that still parses as valid H.264:
    nothing can tell it from content)."""
    path, clean = clean_clip
    assert clean[0] == "ok"
    data = path.read_bytes()
    failed = 0
    for i, (pos, size) in enumerate(media.video_packets(path)):
        bad = tmp_path / f"bad{i}.mp4"
        bad.write_bytes(media.damage_bytes(data, pos + size // 2, 32 if mode == "zero" else 8, mode))
        result = outcome(bad)
        if result[0] == "failed":
            assert result[1] == "decode_error", (i, result)
            assert str(bad) in result[2]
            failed += 1
        else:
            same = all(np.array_equal(a, b) for a, b in zip(result[1], clean[1]))
            assert same or not _ffmpeg_sees_damage(bad), (
                f"packet {i} damaged ({mode}): FFmpeg reports it, yet it was stored with changed frames"
            )
    assert failed >= 15, f"only {failed} damaged clips failed"


def test_half_truncated_jpeg_fails_at_every_cut(tmp_path):
    jpg = media.render_image(tmp_path / "good.jpg", size=(160, 120))
    data = jpg.read_bytes()
    start, end = media.jpeg_scan_range(data)
    assert outcome(jpg, "image")[0] == "ok"
    for kind in ("image", "video"):  # a still listed as a video row is checked the same way
        for k in range(1, 20):
            cut = start + (end - start) * k // 20
            bad = tmp_path / f"cut{k}.jpg"
            bad.write_bytes(data[:cut])
            result = outcome(bad, kind)
            assert result[:2] == ("failed", "decode_error"), (kind, k, cut, result[:2])


def test_truncated_or_flipped_png_fails_at_every_position(tmp_path):
    png = media.render_image(tmp_path / "good.png", size=(160, 120))
    data = png.read_bytes()
    assert outcome(png, "image")[0] == "ok"
    for k in range(1, 20):
        at = len(data) * k // 20
        for name, bad_bytes in (("cut", data[:at]), ("flip", media.damage_bytes(data, at, 2, "flip"))):
            bad = tmp_path / f"{name}{k}.png"
            bad.write_bytes(bad_bytes)
            result = outcome(bad, "image")
            assert result[0] == "failed" and result[1] in ("decode_error", "not_an_image"), (name, k, result[:2])


def _ffmpeg_reports(data: bytes) -> bool:
    """Whether FFmpeg's MJPEG decoder, with error detection on (explode), reports damage in `data`."""
    try:
        with av.open(io.BytesIO(data)) as c:
            c.streams.video[0].codec_context.options = {"err_detect": "explode"}
            frames = list(c.decode(video=0))
        return not frames or any(f.is_corrupt for f in frames)
    except av.error.FFmpegError:
        return True


@pytest.mark.parametrize("mode", ["zero", "flip"])
def test_corrupt_jpeg_entropy_data_that_a_decoder_reports_fails_the_row(tmp_path, mode):
    """Damage at 40 positions of the entropy-coded data: every case that FFmpeg's decoder can report must
    fail as decode_error (its default conceals all of them, painting grey blocks), and the others must at
    least not crash. Baseline JPEG resynchronises after many bit errors, so not every case is visible."""
    jpg = media.render_image(tmp_path / "good.jpg", size=(320, 240))
    data = jpg.read_bytes()
    start, end = media.jpeg_scan_range(data)
    reported = 0
    for k in range(40):
        at = start + (end - start) * k // 40
        bad_bytes = media.damage_bytes(data, at, 16 if mode == "zero" else 2, mode)
        bad = tmp_path / f"bad{k}.jpg"
        bad.write_bytes(bad_bytes)
        result = outcome(bad, "image")
        if _ffmpeg_reports(bad_bytes):
            reported += 1
            assert result[:2] == ("failed", "decode_error"), (k, at, result[:2])
        else:
            assert result[0] == "ok"
    assert reported >= 8, f"the corruption is too mild to test anything: {reported} of 40 reported"


def test_odd_and_tiny_sizes_are_never_upscaled(tmp_path):
    """Sources at most --short-side keep their exact size (1x1 included); larger ones are scaled down with
    even sides, never above the source's."""
    for w, h in [(1, 1), (1, 7), (3, 5), (17, 9), (33, 64), (255, 257), (257, 300), (301, 301), (640, 359)]:
        for suffix in (".png", ".jpg"):
            pixels = np.random.default_rng(w * 1000 + h).integers(0, 256, (h, w, 3))
            img = media.write_still(tmp_path / f"i{w}x{h}{suffix}", pixels)
            result = outcome(img, "image", FrameSpec(frames=1, short_side=256))
            assert result[0] == "ok", (w, h, suffix, result)
            stored_h, stored_w = result[1][0].shape[:2]
            assert (stored_w, stored_h) == resized_size(w, h, 256)
            assert stored_w <= w and stored_h <= h, (w, h, stored_w, stored_h)
            if min(w, h) <= 256:
                assert (stored_w, stored_h) == (w, h)
            else:
                assert min(stored_w, stored_h) == 256 and stored_w % 2 == 0 and stored_h % 2 == 0
            assert (result[2]["width"], result[2]["height"]) == (w, h)


def test_duration_comes_from_the_frames_not_a_lying_header(tmp_path):
    clip = media.lie_about_duration(media.render_clip(tmp_path / "lies.mp4", seconds=2.6, fps=10))
    with av.open(str(clip)) as c:  # the header claims 0.03 s
        assert c.duration < 100_000
    result = outcome(clip)
    assert result[0] == "ok"
    meta = result[2]
    assert meta["num_source_frames"] == 26
    assert meta["duration"] == pytest.approx(2.6)
    assert meta["fps"] == pytest.approx(10.0)
    assert max(meta["frame_timestamps"]) < meta["duration"]
    # and a clean clip keeps the duration its header states
    honest = outcome(media.render_clip(tmp_path / "honest.mp4", seconds=1.5, fps=10))
    assert honest[2]["duration"] == pytest.approx(1.5)


@pytest.mark.parametrize("rotate", [0, 90, 180, 270])
def test_rotation_metadata_is_applied(tmp_path, rotate):
    """Stored frames look like ffmpeg's own (auto-rotated) display of the clip; json gives the upright size."""
    clip = media.render_quadrants(tmp_path / f"r{rotate}.mp4", size=(48, 32), rotate=rotate)
    upright = media.upright_frames(clip)
    result = outcome(clip, spec=FrameSpec(frames=2))
    assert result[0] == "ok"
    for frame, index in zip(result[1], result[2]["frame_indices"]):
        assert frame.shape == upright[index].shape
        assert np.abs(frame.astype(int) - upright[index]).mean() < 8  # JPEG error only; a wrong turn is ~100
    assert (result[2]["width"], result[2]["height"]) == upright[0].shape[1::-1]
    assert result[2]["rotation"] == rotate


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_of_images_is_applied(tmp_path, orientation):
    quadrants = np.zeros((32, 48, 3), np.uint8)
    quadrants[:16, :24], quadrants[:16, 24:], quadrants[16:, :24], quadrants[16:, 24:] = (
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
        (255, 255, 255),
    )
    jpg = media.jpeg_with_orientation(tmp_path / f"o{orientation}.jpg", quadrants, orientation)
    upright = media.upright_frames(jpg)[0]
    result = outcome(jpg, "image")
    assert result[0] == "ok"
    assert result[1][0].shape == upright.shape
    assert np.abs(result[1][0].astype(int) - upright).mean() < 8
    assert (result[2]["width"], result[2]["height"]) == upright.shape[1::-1]


def test_keys_from_different_ids_are_different():
    ids = [
        "日本",
        "中文",
        "ü",
        "é",
        "a.b",
        "a_b",
        "a b",
        "a/b",
        "a%b",
        "clip-1",
        "clip_1",
        "ÄÖ",
        "__",
        "x" * 40 + ".",
        "x" * 40 + ":",
    ]
    keys = [safe_key(i) for i in ids]
    assert len(set(keys)) == len(ids), dict(zip(ids, keys))
    for i, k in zip(ids, keys):
        assert k and all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in k)
        assert safe_key(k) == k  # a key is its own key
    assert safe_key("clip-1") == "clip-1" and safe_key("  clip_1 ") == "clip_1"


def test_damaged_media_and_non_ascii_keys_through_make_shards(tmp_path):
    """End to end: damaged clip and JPEGs fail as decode_error with their path, two non-ASCII ids both
    become samples, and the folder verifies."""
    root = tmp_path / "media"
    good = media.render_clip(root / "good.mp4", seconds=1, size=(160, 120), fps=10)
    data = good.read_bytes()
    pos, size = media.video_packets(good)[2]
    (root / "damaged.mp4").write_bytes(media.damage_bytes(data, pos + size // 2, 32, "zero"))
    jpg = media.render_image(root / "img.jpg", size=(160, 120)).read_bytes()
    (root / "half.jpg").write_bytes(jpg[: len(jpg) // 2])
    table = tmp_path / "rows.csv"
    table.write_text(
        "id,file,caption\n"
        "日本,good.mp4,first\n中文,good.mp4,second\n"
        "bad,damaged.mp4,damaged clip\nhalf,half.jpg,half a jpeg\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    argv = shards_argv("csv", table=table, path_col="file", key_col="id", media_root=root, out=out, workers=0, frames=4)
    assert cli.main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total_samples"] == 2 and manifest["failed"] == {"decode_error": 2}
    failures = {f["key"]: f for p in out.glob("*.stats.json") for f in json.loads(p.read_text())["failures"]}
    assert set(failures) == {"bad", "half"}
    assert "damaged.mp4" in failures["bad"]["detail"] and "half.jpg" in failures["half"]["detail"]
    assert verify(out).ok
