"""Checkpoints: the released .pth.tar layout (built here exactly as the original's trainer wrote it),
temporal inflation values, and our portable safetensors folder."""

import collections
import os
import pathlib
import sys
import types

import pytest
import torch

from foundation.safeload import DamagedFileError, RefusedGlobalError
from models import FrozenInTime, ModelConfig, load_pretrained, load_weights_into, save_pretrained
from models.checkpoint import adapt_temporal_embed, model_config_from_original, read_original_checkpoint
from models.config import TEMPORAL_NOISE_STD
from models.tiny import write_tiny_text_model


@pytest.fixture(scope="module")
def distilbert_dir(tmp_path_factory):
    return str(write_tiny_text_model(tmp_path_factory.mktemp("text") / "distilbert", arch="distilbert"))


def _model(text_dir, seed, num_frames=4, img_size=32, **top):
    torch.manual_seed(seed)
    cfg = ModelConfig.from_dict(
        {
            "preset": "tiny",
            "text": {"model": text_dir},
            "video": {"num_frames": num_frames, "img_size": img_size},
            **top,
        }
    )
    model = FrozenInTime(cfg).eval()
    with torch.no_grad():  # "trained": every tensor away from its init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _inputs(T=4, size=32):
    g = torch.Generator().manual_seed(7)
    video = torch.randn(2, T, 3, size, size, generator=g)
    ids = torch.tensor([[101, 1037, 3899, 3216, 102], [101, 2048, 8870, 102, 0]])
    return video, ids, (ids != 0).long()


def _outputs(model, T=4, size=32):
    with torch.no_grad():
        return model(*_inputs(T, size))


def _original_config():
    """The JSON config the original's ConfigParser holds (read_json gives OrderedDicts)."""
    return collections.OrderedDict(
        [
            ("name", "CC3M-WebVid2M-4f-pti2k"),
            ("n_gpu", 4),
            (
                "arch",
                collections.OrderedDict(
                    [
                        ("type", "FrozenInTime"),
                        (
                            "args",
                            collections.OrderedDict(
                                [
                                    (
                                        "video_params",
                                        collections.OrderedDict(
                                            [
                                                ("model", "SpaceTimeTransformer"),
                                                ("arch_config", "base_patch16_224"),
                                                ("num_frames", 4),
                                                ("pretrained", True),
                                                ("time_init", "zeros"),
                                            ]
                                        ),
                                    ),
                                    (
                                        "text_params",
                                        collections.OrderedDict(
                                            [
                                                ("model", "distilbert-base-uncased"),
                                                ("pretrained", True),
                                                ("input", "text"),
                                            ]
                                        ),
                                    ),
                                    ("projection", "minimal"),
                                    ("load_checkpoint", ""),
                                ]
                            ),
                        ),
                    ]
                ),
            ),
            ("loss", {"type": "NormSoftmaxLoss", "args": {}}),
            ("trainer", {"epochs": 100, "save_dir": "/work/maxbain/Libs/frozen-in-time"}),
        ]
    )


@pytest.fixture
def fake_parse_config():
    """A `parse_config` module whose ConfigParser pickles as the original's does; removed before loading."""
    module = types.ModuleType("parse_config")

    class ConfigParser:
        def __init__(self, config):
            self.cfg_fname = pathlib.PosixPath("configs/cc-webvid2m-pt-i2k.json")
            self.resume = None
            self._config = config
            save_dir = pathlib.PosixPath(config["trainer"]["save_dir"])
            self._save_dir = save_dir / "models" / config["name"] / "0623_120000"
            self._web_log_dir = save_dir / "web" / config["name"] / "0623_120000"
            self._log_dir = save_dir / "log" / config["name"] / "0623_120000"
            self.log_levels = {0: 30, 1: 20, 2: 10}

    ConfigParser.__module__, ConfigParser.__qualname__ = "parse_config", "ConfigParser"
    module.ConfigParser = ConfigParser
    sys.modules["parse_config"] = module
    yield ConfigParser
    sys.modules.pop("parse_config", None)


def _write_released(path, model, config_parser_cls, prefix="module.", with_position_ids=False):
    """torch.save exactly as the original's BaseTrainer._save_checkpoint under DataParallel."""
    state = collections.OrderedDict((prefix + k, v.clone()) for k, v in model.state_dict().items())
    if with_position_ids:  # what some transformers 4.x versions stored for DistilBERT
        state[prefix + "text_model.embeddings.position_ids"] = torch.arange(128).unsqueeze(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, eps=1e-6, weight_decay=0.0)
    torch.save(
        {
            "arch": "DataParallel",
            "epoch": 6,
            "state_dict": state,
            "optimizer": optimizer.state_dict(),
            "monitor_best": 0.4321,
            "config": config_parser_cls(_original_config()),
        },
        path,
    )
    sys.modules.pop("parse_config", None)  # the reader must not need the original code


@pytest.mark.parametrize("prefix,with_position_ids", [("module.", False), ("", True)])
def test_released_checkpoint_import_round_trip(tmp_path, distilbert_dir, fake_parse_config, prefix, with_position_ids):
    source = _model(distilbert_dir, seed=1)
    path = tmp_path / "cc-webvid2m-4f_stformer_b_16_224.pth.tar"
    _write_released(path, source, fake_parse_config, prefix, with_position_ids)
    assert "parse_config" not in sys.modules

    state, config = read_original_checkpoint(path)
    assert len(state) == len(source.state_dict()) + with_position_ids
    assert all(k.startswith(prefix) for k in state)
    assert config["arch"]["args"]["video_params"]["num_frames"] == 4
    assert config["trainer"]["save_dir"] == "/work/maxbain/Libs/frozen-in-time"
    cfg = model_config_from_original(config)
    assert (cfg.video.num_frames, cfg.text.model, cfg.projection, cfg.video.embed_dim) == (
        4,
        "distilbert-base-uncased",
        "minimal",
        768,
    )

    target = _model(distilbert_dir, seed=2)
    before = _outputs(target)
    report = load_weights_into(target, path)
    assert report.missing == [] and report.unexpected == []
    assert any("module." in note for note in report.adapted) == (prefix == "module.")
    assert any("position_ids" in note for note in report.adapted) == with_position_ids
    after, expected = _outputs(target), _outputs(source)
    assert not torch.allclose(before[1], expected[1])
    for got, want in zip(after, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_unsafe_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "config": Exploit()}, path)
    model_stub = torch.nn.Linear(1, 1)
    with pytest.raises(RefusedGlobalError, match="refused to unpickle") as refused:
        load_weights_into(model_stub, path)
    # the message names the file and the global it refused (torch's first line says neither)
    assert refused.value.global_name == f"{os.system.__module__}.system"
    assert str(path) in str(refused.value) and refused.value.global_name in str(refused.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "zip, cut at half", "legacy format, cut at half", "random bytes"])
def test_damaged_weights_file_is_named_and_not_called_unsafe(tmp_path, damage):
    """An empty / cut-short / foreign .pth.tar says so and names the file (it used to give a bare EOFError,
    or "refused to unpickle" for random bytes)."""
    whole = tmp_path / "whole.pth.tar"
    torch.save(
        {"state_dict": {"w": torch.arange(5000.0)}},
        whole,
        _use_new_zipfile_serialization=not damage.startswith("legacy"),
    )
    data = whole.read_bytes()
    path = tmp_path / "model_best.pth.tar"
    path.write_bytes({"empty": b"", "random bytes": bytes(range(256)) * 16}.get(damage, data[: len(data) // 2]))
    with pytest.raises(DamagedFileError) as err:
        load_weights_into(torch.nn.Linear(1, 1), path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "refused" not in message and "get the file again" in message
    assert ("empty (0 bytes)" in message) == (damage == "empty")


def test_temporal_inflation_from_one_frame_checkpoint(tmp_path, distilbert_dir, fake_parse_config):
    """A 1-frame-model checkpoint into a 4-frame model: row 0 kept, the rest per temporal_fix."""
    one = _model(distilbert_dir, seed=3, num_frames=1)
    path = tmp_path / "one_frame.pth.tar"
    _write_released(path, one, fake_parse_config)
    four = _model(distilbert_dir, seed=4, num_frames=4)
    report = load_weights_into(four, path, temporal_fix="zeros")
    assert any("(1, 1, 64) -> (1, 4, 64)" in note for note in report.adapted)
    row = one.video_model.temporal_embed[0, 0]
    assert torch.equal(four.video_model.temporal_embed[0, 0], row)
    assert torch.count_nonzero(four.video_model.temporal_embed[0, 1:]) == 0
    # one frame in, one frame out: the inflated model agrees with the 1-frame original
    torch.testing.assert_close(_outputs(four, T=1), _outputs(one, T=1), rtol=0, atol=0)


def test_adapt_temporal_embed_values():
    r0, r1 = torch.full((3,), 1.0), torch.full((3,), 5.0)
    two = torch.stack([r0, r1]).unsqueeze(0)  # [1, 2, 3]
    zero = torch.zeros(3)

    def rows(mode, n=4):
        return list(adapt_temporal_embed(two, n, mode)[0])

    for got, want in zip(rows("zeros"), [r0, r1, zero, zero]):
        assert torch.equal(got, want)
    for mode in ("nearest", "interp"):
        for got, want in zip(rows(mode), [r0, r0, r1, r1]):
            assert torch.equal(got, want)
    # bilinear, align_corners=False: source positions -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    for got, want in zip(rows("bilinear"), [r0, 0.75 * r0 + 0.25 * r1, 0.25 * r0 + 0.75 * r1, r1]):
        torch.testing.assert_close(got, want)
    truncated = adapt_temporal_embed(torch.arange(12.0).reshape(1, 4, 3), 2, "bilinear")
    assert torch.equal(truncated, torch.arange(6.0).reshape(1, 2, 3))
    with pytest.raises(ValueError, match="temporal_fix"):
        adapt_temporal_embed(two, 4, "cubic")


def test_spatial_positions_resampled_on_load(tmp_path, distilbert_dir):
    small = _model(distilbert_dir, seed=5)
    save_pretrained(small, small.config, tmp_path / "small")
    big = _model(distilbert_dir, seed=6, img_size=48)
    report = load_weights_into(big, tmp_path / "small")
    assert any("grid 4x4 -> 6x6" in note for note in report.adapted)
    # the 32 px model run at 48 px resamples the same way, so both agree
    torch.testing.assert_close(_outputs(big, size=48), _outputs(small, size=48))


def test_save_and_load_pretrained_round_trip(tmp_path, distilbert_dir):
    from transformers import AutoTokenizer

    model = _model(distilbert_dir, seed=8, learnable_temperature=True)
    out = save_pretrained(
        model, model.config, tmp_path / "export", tokenizer=AutoTokenizer.from_pretrained(distilbert_dir)
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == ["model_config.json", "text_config.json", "tokenizer", "weights.safetensors"]
    loaded = load_pretrained(out)
    assert loaded.config == model.config
    torch.testing.assert_close(loaded.logit_scale, model.logit_scale)
    for got, want in zip(_outputs(loaded.eval()), _outputs(model)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert AutoTokenizer.from_pretrained(str(out / "tokenizer"))("a dog")["input_ids"][0] == 101


def test_mismatched_weights_are_reported(tmp_path, distilbert_dir):
    model = _model(distilbert_dir, seed=9)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("vid_proj")}
    state["video_model.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"missing 2 \[vid_proj.0.weight, vid_proj.0.bias\]"):
        load_weights_into(model, tmp_path / "partial.pth")
    report = load_weights_into(model, tmp_path / "partial.pth", strict=False)
    assert report.unexpected == ["video_model.extra"] and len(report.missing) == 2
    narrower = _model(distilbert_dir, seed=9, projection_dim=16)
    with pytest.raises(ValueError, match="shapes do not match"):
        load_weights_into(narrower, tmp_path / "partial.pth")


def test_vit_b16_model_has_the_released_state_dict_layout():
    """The released layout (docs/ORIGINAL.md, 'Released checkpoint'): 327 tensors, text 66,362,880 + video
    114,168,576 + projections 393,728 parameters, no buffers, in the released order (built on the meta device:
    no memory, no download)."""
    from transformers import DistilBertConfig

    with torch.device("meta"):
        model = FrozenInTime(ModelConfig.from_dict({}), init_weights=False, text_config=DistilBertConfig())
    state = model.state_dict()
    assert len(state) == 327

    def count(prefix):
        return sum(v.numel() for k, v in state.items() if k.startswith(prefix))

    assert (count("text_model."), count("video_model."), count("txt_proj.") + count("vid_proj.")) == (
        66_362_880,
        114_168_576,
        393_728,
    )
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["video_model.pos_embed"] == (1, 197, 768) and shapes["video_model.temporal_embed"] == (1, 4, 768)
    assert shapes["video_model.blocks.11.timeattn.qkv.weight"] == (2304, 768)
    assert shapes["txt_proj.1.weight"] == shapes["vid_proj.0.weight"] == (256, 768)
    video_keys = [k[len("video_model.") :] for k in state if k.startswith("video_model.")]
    assert video_keys[:5] == [
        "cls_token",
        "pos_embed",
        "temporal_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
    ]
    assert [k for k in video_keys if k.startswith("blocks.0.")] == [
        f"blocks.0.{m}.{p}"
        for m in (
            "norm1",
            "attn.qkv",
            "attn.proj",
            "timeattn.qkv",
            "timeattn.proj",
            "norm2",
            "mlp.fc1",
            "mlp.fc2",
            "norm3",
        )
        for p in ("weight", "bias")
    ]
    assert list(state)[0].startswith("text_model.") and list(state)[-4:] == [
        "txt_proj.1.weight",
        "txt_proj.1.bias",
        "vid_proj.0.weight",
        "vid_proj.0.bias",
    ]


def test_noise_inflation_keeps_rows_and_draws_distinct_new_ones():
    """ "noise": loaded rows kept, new rows N(0, 0.02^2) from a seeded generator, so they differ from each
    other (the original's modes start them equal, and equal rows stay equal: docs/DEMO.md)."""
    one = torch.randn(1, 1, 64)
    out = adapt_temporal_embed(one, 4, "noise")
    assert out.shape == (1, 4, 64) and torch.equal(out[:, :1], one)
    assert torch.equal(out, adapt_temporal_embed(one, 4, "noise"))  # deterministic
    assert 0.01 < out[0, 1:].std() < 0.03
    assert torch.cdist(out[0, 1:], out[0, 1:]).fill_diagonal_(1).min() > 0.05
    for mode in ("zeros", "nearest", "bilinear"):  # the original's: equal rows
        rows = adapt_temporal_embed(one, 4, mode)[0, 1:]
        assert torch.equal(rows[0], rows[1]) and torch.equal(rows[1], rows[2])
    wide = adapt_temporal_embed(one, 4, "noise", noise_std=0.5)  # the demo's scale
    assert torch.allclose(wide[0, 1:], 25 * out[0, 1:]) and torch.equal(wide[:, :1], one)
    with pytest.raises(ValueError, match="noise_std"):
        adapt_temporal_embed(one, 4, "noise", noise_std=-1)


def test_the_trainer_config_carries_the_noise_scale_to_the_loaded_weights(tmp_path, distilbert_dir):
    """checkpoint.load_temporal_noise_std reaches load_weights_into (validated; 0.02 by default)."""
    from foundation.schema import ConfigError
    from pipeline.train.config import load_config

    cfg_1f = ModelConfig.from_dict({"preset": "tiny", "text": {"model": distilbert_dir}, "video": {"num_frames": 1}})
    save_pretrained(FrozenInTime(cfg_1f), cfg_1f, tmp_path / "w1")
    four = FrozenInTime(ModelConfig.from_dict({"preset": "tiny", "text": {"model": distilbert_dir}}))
    report = load_weights_into(four, tmp_path / "w1", "noise", noise_std=0.5)
    assert any("noise, std 0.5" in note for note in report.adapted)
    assert 0.3 < four.video_model.temporal_embed[0, 1:].std() < 0.7
    config = pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny_4f.json"
    sets = ["checkpoint.load_temporal_fix=noise", "checkpoint.load_temporal_noise_std=0.5"]
    assert load_config(config).checkpoint.load_temporal_noise_std == TEMPORAL_NOISE_STD == 0.02  # one default
    assert load_config(config, sets).checkpoint.load_temporal_noise_std == 0.5
    with pytest.raises(ConfigError, match=r"checkpoint\.load_temporal_noise_std"):
        load_config(config, ["checkpoint.load_temporal_noise_std=-0.1"])
