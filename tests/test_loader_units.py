"""Loader building blocks without worker processes: frame choice, clip transforms, shard lists, config."""

import gzip
import io
import json
import tarfile

import numpy as np
import pytest
import torch

import shardgen
from foundation.schema import ConfigError
from pipeline.data import frames, shardlists, tarstream, transforms
from pipeline.data.options import IMAGENET_MEAN, IMAGENET_STD, DatasetSpec, LoaderOptions


# ---- frame choice ----------------------------------------------------------------------------------------
def test_uniform_takes_the_middle_of_each_group():
    assert frames.frame_indices(8, 4, "uniform") == [0, 2, 4, 6]  # groups [0,1] [2,3] ...: (s + e) // 2
    assert frames.frame_indices(8, 1, "uniform") == [3]
    assert frames.frame_indices(12, 4, "uniform") == [1, 4, 7, 10]
    assert frames.frame_indices(8, 8, "uniform") == list(range(8))


def test_rand_draws_within_each_group_and_can_draw_every_frame():
    rng = np.random.default_rng(0)
    draws = np.array([frames.frame_indices(8, 4, "rand", rng) for _ in range(400)])
    for t in range(4):  # group t is stored frames {2t, 2t+1}: both drawn (the original never drew the last)
        assert set(draws[:, t]) == {2 * t, 2 * t + 1}
    assert (np.diff(draws, axis=1) > 0).all()  # temporal order
    assert frames.frame_indices(4, 4, "rand", rng) == [0, 1, 2, 3]  # one-frame groups work (original raised)


def test_fewer_stored_frames_than_wanted_repeats_frames_in_order():
    assert frames.frame_indices(2, 4, "uniform") == [0, 0, 1, 1]
    assert frames.frame_indices(3, 4, "rand", np.random.default_rng(0)) == [0, 0, 1, 2]
    assert frames.frame_indices(1, 4, "uniform") == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="unknown frame sampling mode"):
        frames.frame_indices(8, 4, "middle")


def test_decode_frames_rejects_corrupt_jpeg_and_mixed_sizes():
    good = shardgen.make_frame(0, 48, 64, False)
    assert frames.decode_frames([good, good]).shape == (2, 48, 64, 3)
    with pytest.raises(ValueError):
        frames.decode_frames([good, good[: len(good) // 3]])
    with pytest.raises(ValueError, match="differ in size"):
        frames.decode_frames([good, shardgen.make_frame(0, 40, 64, False)])


# ---- transforms ------------------------------------------------------------------------------------------
def test_train_clip_uses_one_crop_and_flip_for_all_frames():
    base = np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    clip = np.stack([base] * 4)
    flips = set()
    for seed in range(20):
        out = transforms.train_clip(clip, np.random.default_rng(seed), res=32)
        assert out.shape == (4, 3, 32, 32) and out.dtype == torch.uint8
        assert all(torch.equal(out[0], out[t]) for t in range(1, 4))
        again = transforms.train_clip(clip, np.random.default_rng(seed), res=32)
        assert torch.equal(out, again)  # a function of the seed only
        unflipped = transforms.crop_resize(
            clip, transforms.random_resized_crop_box(60, 80, np.random.default_rng(seed)), 32
        )
        flips.add(torch.equal(out, unflipped.flip(-1)) and not torch.equal(out, unflipped))
    assert flips == {True, False}


def test_random_resized_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = transforms.random_resized_crop_box(256, 455, rng)
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 455
        assert 0.5 * 256 * 455 * 0.97 <= h * w <= 256 * 455
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03


def test_eval_clip_is_the_centre_crop():
    assert transforms.center_crop_box(256, 455, 256, 256) == (0, 99, 256, 256)
    assert transforms.center_crop_box(512, 300, 256, 224) == (125, 19, 262, 262)
    clip = np.zeros((2, 256, 455, 3), np.uint8)
    clip[:, :, 99:355] = 200  # only the centre square is bright
    out = transforms.eval_clip(clip, res=32)
    assert out.shape == (2, 3, 32, 32) and int(out.min()) == 200


def test_normalize_video_matches_the_formula():
    video = torch.randint(0, 256, (2, 3, 3, 4, 4), dtype=torch.uint8)
    out = transforms.normalize_video(video, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, video.float() / 127.5 - 1.0)
    ref = (video.float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(transforms.normalize_video(video), ref)


# ---- shard lists -----------------------------------------------------------------------------------------
def test_each_epoch_gives_every_shard_to_exactly_one_reader():
    for num_shards, readers in [(7, 4), (8, 4), (13, 6)]:
        orders = []
        for epoch in range(3):
            order = shardlists.epoch_order(num_shards, 5, "webvid", epoch)
            parts = [shardlists.worker_shards(order, g, readers) for g in range(readers)]
            assert sorted(s for p in parts for s in p) == list(range(num_shards))
            orders.append(list(order))
        assert orders[0] != orders[1]  # reshuffled every epoch
    assert list(shardlists.epoch_order(10, 5, "a", 0)) != list(shardlists.epoch_order(10, 5, "b", 0))


def test_too_few_shards_is_explained():
    with pytest.raises(ConfigError, match=r"3 shards for 2 ranks x 2 workers = 4 readers.*num_workers to 1"):
        shardlists.check_enough_shards(3, 2, 2, "data.train[0]")
    shardlists.check_enough_shards(4, 2, 2, "data.train[0]")


def test_shard_sources_folder_manifest_pattern_and_list(tmp_path):
    folder = shardgen.write_shards(tmp_path / "ds", shard_sizes=(2, 3, 4))
    by_folder = shardlists.resolve_shards(str(folder), "x")
    assert by_folder.counts == (2, 3, 4) and by_folder.kind == "video" and by_folder.frames_per_sample == 8
    assert shardlists.resolve_shards(str(folder / "manifest.json"), "x").urls == by_folder.urls
    pattern = shardlists.resolve_shards(str(folder / "ds-{000000..000001}.tar"), "x")
    assert pattern.counts == (2, 3) and len(pattern.urls) == 2  # counts from the manifest beside them
    bare = shardgen.write_shards(tmp_path / "bare", shard_sizes=(2, 2), manifest=False)
    listed = shardlists.resolve_shards([str(bare / "ds-000000.tar"), f"pipe:cat {bare / 'ds-000001.tar'}"], "x")
    assert listed.counts is None and listed.urls[1].startswith("pipe:")
    with pytest.raises(ConfigError, match=r"x: .*bare holds no manifest.json"):
        shardlists.resolve_shards(str(bare), "x")
    with pytest.raises(ConfigError, match="does not exist"):
        shardlists.resolve_shards(str(bare / "ds-{000000..000005}.tar"), "x")
    bad = tmp_path / "bad" / "manifest.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError, match="expected 'fit-shards/1'"):
        shardlists.resolve_shards(str(bad), "x")
    manifest = json.loads((folder / "manifest.json").read_text())
    for count in (-1, "3", 2.5, None, True):  # the per-shard counts the loader compares every shard with
        manifest["shards"][1]["samples"] = count
        bad.write_text(json.dumps(manifest))
        with pytest.raises(ConfigError, match=r"shards\[1\].samples is .*, not a sample count"):
            shardlists.resolve_shards(str(bad), "x")


# ---- config ----------------------------------------------------------------------------------------------
def test_dataset_spec_validation_names_the_key(tmp_path):
    bare = shardgen.write_shards(tmp_path / "bare", shard_sizes=(2,), manifest=False)
    where = "data.train[1]"
    with pytest.raises(ConfigError, match=r"data.train\[1\].batch_size: required"):
        DatasetSpec.from_dict({"name": "a", "shards": str(bare)}, where)
    with pytest.raises(ConfigError, match=r"data.train\[1\].frames: unknown key"):
        DatasetSpec.from_dict({"name": "a", "shards": "x", "batch_size": 2, "frames": 4}, where)
    with pytest.raises(ConfigError, match=r"data.train\[1\].caption_mode"):
        DatasetSpec.from_dict({"name": "a", "shards": "x", "batch_size": 2, "caption_mode": "some"}, where)
    spec = DatasetSpec.from_dict(
        {"name": "a", "shards": str(bare / "ds-000000.tar"), "batch_size": 2, "kind": "video"}, where
    )
    with pytest.raises(ConfigError, match=r"data.train\[1\].num_samples: no manifest.json"):
        spec.resolve()
    spec = DatasetSpec.from_dict({"name": "a", "shards": str(bare / "ds-000000.tar"), "batch_size": 2}, where)
    with pytest.raises(ConfigError, match=r"data.train\[1\].kind"):
        spec.resolve()
    images = shardgen.write_shards(tmp_path / "img", kind="image", shard_sizes=(2,))
    spec = DatasetSpec.from_dict({"name": "a", "shards": str(images), "batch_size": 2, "num_frames": 4}, where)
    with pytest.raises(ConfigError, match=r"num_frames: an image dataset has 1 frame"):
        spec.resolve()
    spec = DatasetSpec.from_dict({"name": "a", "shards": str(images), "batch_size": 2, "kind": "video"}, where)
    with pytest.raises(ConfigError, match=r"kind: 'video', but .* holds 'image'"):
        spec.resolve()


def test_loader_options_defaults_and_errors():
    options = LoaderOptions.from_dict({}, "data.options")
    assert options.input_res == 224 and options.mean == IMAGENET_MEAN
    vit = LoaderOptions.from_dict({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}, "data.options")
    assert vit.std == (0.5, 0.5, 0.5)
    with pytest.raises(ConfigError, match=r"data.options.mean: expected a list of 3 numbers"):
        LoaderOptions.from_dict({"mean": [0.5]}, "data.options")
    with pytest.raises(ConfigError, match=r"data.options.num_workers: must be >= 0"):
        LoaderOptions.from_dict({"num_workers": -1}, "data.options")
    with pytest.raises(ConfigError, match=r"data.options.workers: unknown key"):
        LoaderOptions.from_dict({"workers": 2}, "data.options")


# ---- tar reading -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_reader_handles_long_names_and_reports_damage(fmt):
    names = ["a.txt", "dir/" + "x" * 90 + ".000.jpg", "dir/b.json"]
    if fmt == tarfile.USTAR_FORMAT:
        names[1] = "dir/" + "x" * 60 + ".000.jpg"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        tar.addfile(_dir_info("somedir"))
        for name in names:
            data = name.encode() * 7
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = buf.getvalue()
    members = list(tarstream.iter_members(io.BytesIO(whole)))
    assert [(m.name, m.data, m.problem) for m in members] == [(n, n.encode() * 7, None) for n in names]
    with pytest.raises(tarstream.TarFormatError, match="unexpected end of data"):
        list(tarstream.iter_members(io.BytesIO(whole[:1500])))
    damaged = bytearray(whole)
    damaged[512 * 3 + 10] ^= 0xFF  # a byte of a later header
    with pytest.raises(tarstream.TarFormatError):
        list(tarstream.iter_members(io.BytesIO(bytes(damaged))))
    with pytest.raises(tarstream.TarFormatError, match="gzip"):
        list(tarstream.iter_members(io.BytesIO(gzip.compress(whole))))


def _dir_info(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info
