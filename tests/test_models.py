"""The space-time video encoder against timm's ViT and against the original's attention written out here,
plus the joint model's config, text pooling and projections."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from foundation.schema import ConfigError
from models import FrozenInTime, ModelConfig, SpaceTimeTransformer
from models.config import VideoConfig
from models.tiny import MINILM_SAFETENSORS_SHA256, minilm_path, write_tiny_text_model
from models.video_transformer import init_time_attention_all_, resize_pos_embed
from models.vit_init import init_from_vit

SIZES = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)
N_PATCHES = (32 // 8) ** 2


@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory):
    """A timm ViT with random weights (random LayerNorms too), saved as a local weights file."""
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        **SIZES, qkv_bias=True, num_classes=10, global_pool="token"
    ).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    path = tmp_path_factory.mktemp("vit") / "vit_tiny.pth"
    torch.save(vit.state_dict(), path)
    return vit, str(path)


@pytest.fixture(scope="module")
def video_from_vit(timm_vit):
    model = SpaceTimeTransformer(**SIZES, num_frames=4).eval()
    init_from_vit(model, timm_vit[1])
    return model


# ---- equivalence with the ImageNet ViT at initialisation -------------------------------------------


def test_single_frame_equals_timm_vit_cls_feature(timm_vit, video_from_vit):
    vit, _ = timm_vit
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = vit.forward_head(vit.forward_features(images), pre_logits=True)  # normed CLS [3, 64]
        got = video_from_vit(images.unsqueeze(1))  # as 1-frame videos
    assert got.shape == (3, 64)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_joint_model_takes_vit_init_from_config(timm_vit, video_from_vit, text_dirs):
    model = _tiny_model(text_dirs["bert"], video={"init": timm_vit[1]})
    for key, value in video_from_vit.state_dict().items():
        assert torch.equal(model.video_model.state_dict()[key], value), key


def test_each_block_reduces_to_a_vit_block_at_init(timm_vit, video_from_vit):
    """Zero-init time attention: patch tokens of frame f get exactly the ViT block on [CLS, frame f];
    CLS gets the ViT block over all tokens (it attends globally)."""
    vit, _ = timm_vit
    T, n = 4, N_PATCHES
    x = torch.randn(2, 1 + T * n, 64)
    for ours, theirs in zip(video_from_vit.blocks, vit.blocks):
        with torch.no_grad():
            assert torch.count_nonzero(ours.timeattn(ours.norm3(x), "time", T)) == 0
            out = ours(x, T)
            torch.testing.assert_close(out[:, 0], theirs(x)[:, 0], rtol=1e-5, atol=1e-5)
            for f in range(T):
                frame = x[:, 1 + f * n : 1 + (f + 1) * n]
                expected = theirs(torch.cat([x[:, :1], frame], dim=1))[:, 1:]
                torch.testing.assert_close(out[:, 1 + f * n : 1 + (f + 1) * n], expected, rtol=1e-5, atol=1e-5)


def test_trained_time_attention_changes_the_block(timm_vit, video_from_vit):
    """Control for the test above: once time attention has trained weights, the block is no longer a
    ViT block. (With proj.weight all ones the time output is the same in every channel, which norm1
    removes; so both qkv and proj must have moved.)"""
    import copy

    block = copy.deepcopy(video_from_vit.blocks[0])
    with torch.no_grad():
        block.timeattn.qkv.weight.normal_(0, 0.2)
        block.timeattn.proj.weight.normal_(0, 0.2)
    x = torch.randn(2, 1 + 2 * N_PATCHES, 64)
    with torch.no_grad():
        assert not torch.allclose(block(x, 2)[:, 0], timm_vit[0].blocks[0](x)[:, 0], atol=1e-3)


def test_time_attention_zero_init_and_temporal_embed_zero():
    model = SpaceTimeTransformer(**SIZES, num_frames=4)
    for block in model.blocks:
        assert torch.count_nonzero(block.timeattn.qkv.weight) == 0
        assert torch.count_nonzero(block.timeattn.qkv.bias) == 0
        assert torch.equal(block.timeattn.proj.weight, torch.ones(64, 64))
        assert torch.count_nonzero(block.timeattn.proj.bias) == 0
    assert torch.count_nonzero(model.temporal_embed) == 0


# ---- the original's attention written out with explicit masks ------------------------------------


def _reference_attention(attn, x, group, T, n):
    """The original's VarAttention (docs/ORIGINAL.md, 'Architecture') as full attention with a mask: CLS query
    sees everything; a patch query sees CLS plus the patches of its group (same frame for space, same location
    for time)."""
    B, N, C = x.shape
    H, d = attn.num_heads, C // attn.num_heads
    q, k, v = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    idx = torch.arange(T * n)
    key = idx // n if group == "space" else idx % n  # frame or location of each patch
    allowed = torch.ones(N, N, dtype=torch.bool)
    allowed[1:, 1:] = key[:, None] == key[None, :]
    scores = (q @ k.transpose(-2, -1)) * d**-0.5
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    out = (probs @ v).transpose(1, 2).reshape(B, N, C)
    return F.linear(out, attn.proj.weight, attn.proj.bias)


def _reference_forward(model, video):
    """The original's forward (docs/ORIGINAL.md, 'Architecture') written out: embeddings, then time -> space
    -> MLP with the original residuals."""
    B, T, C, Hh, Ww = video.shape
    ln = lambda m, x: F.layer_norm(x, m.normalized_shape, m.weight, m.bias, 1e-6)  # noqa: E731
    conv = model.patch_embed.proj
    frames = [
        F.conv2d(video[:, t], conv.weight, conv.bias, stride=conv.stride).flatten(2).transpose(1, 2) for t in range(T)
    ]  # T x [B, n, D]
    n = frames[0].shape[1]
    tokens = [frames[t] + model.pos_embed[:, 1:] + model.temporal_embed[:, t : t + 1] for t in range(T)]
    x = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(B, -1, -1)] + tokens, dim=1)
    for blk in model.blocks:
        x_t = x + _reference_attention(blk.timeattn, ln(blk.norm3, x), "time", T, n)
        x_s = x + _reference_attention(blk.attn, ln(blk.norm1, x_t), "space", T, n)
        h = F.gelu(F.linear(ln(blk.norm2, x_s), blk.mlp.fc1.weight, blk.mlp.fc1.bias))
        x = x_s + F.linear(h, blk.mlp.fc2.weight, blk.mlp.fc2.bias)
    return ln(model.norm, x)[:, 0]


@pytest.mark.parametrize("T", [1, 2, 4])
@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_attention_equals_the_spec_written_out(T, impl):
    torch.manual_seed(T)
    model = SpaceTimeTransformer(**SIZES, num_frames=4, attn_impl=impl).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # time attention included: nothing is zero
    video = torch.randn(2, T, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(video), _reference_forward(model, video), rtol=1e-9, atol=1e-9)


def test_sdpa_and_explicit_gradients_agree():
    torch.manual_seed(0)
    model = SpaceTimeTransformer(**SIZES, num_frames=4).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    video = torch.randn(2, 3, 3, 32, 32, dtype=torch.float64)
    grads = {}
    for impl in ("sdpa", "explicit"):
        model.zero_grad()
        model.set_attn_impl(impl)
        model(video).square().sum().backward()
        grads[impl] = {k: p.grad.clone() for k, p in model.named_parameters()}
    assert grads["sdpa"]["blocks.0.timeattn.qkv.weight"].abs().sum() > 0
    for k in grads["sdpa"]:
        torch.testing.assert_close(grads["sdpa"][k], grads["explicit"][k], rtol=1e-8, atol=1e-10, msg=k)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = SpaceTimeTransformer(**SIZES, num_frames=4)
    ckpt = SpaceTimeTransformer(**SIZES, num_frames=4, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    video = torch.randn(2, 2, 3, 32, 32)
    for m in (plain, ckpt):
        m.train()
        m(video).sum().backward()
    for (k, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=k)


def test_other_resolution_interpolates_positions():
    """A 32 px model run on 48 px frames equals a 48 px model holding the resampled positions."""
    torch.manual_seed(0)
    small = SpaceTimeTransformer(**SIZES, num_frames=4).eval()
    big = SpaceTimeTransformer(**{**SIZES, "img_size": 48}, num_frames=4).eval()
    state = small.state_dict()
    state["pos_embed"] = resize_pos_embed(state["pos_embed"], (6, 6), (4, 4))
    big.load_state_dict(state)
    video = torch.randn(2, 2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(small(video), big(video))
        assert not torch.allclose(small(video), small(video[..., :32, :32]))


def test_bad_video_inputs_are_named():
    model = SpaceTimeTransformer(**SIZES, num_frames=2)
    with pytest.raises(ValueError, match="at most num_frames=2"):
        model(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\[B, T, C, H, W\]"):
        model(torch.randn(1, 3, 32, 32))


def test_vit_init_rejects_a_mismatched_vit(tmp_path):
    vit = timm.models.vision_transformer.VisionTransformer(**{**SIZES, "depth": 3}, num_classes=0)
    path = tmp_path / "deeper.pth"
    torch.save(vit.state_dict(), path)
    with pytest.raises(ValueError, match="depth"):
        init_from_vit(SpaceTimeTransformer(**SIZES), str(path))
    with pytest.raises(FileNotFoundError):
        init_from_vit(SpaceTimeTransformer(**SIZES), str(tmp_path / "missing.pth"))


# ---- config -------------------------------------------------------------------------------------


def test_config_round_trip_and_presets():
    cfg = ModelConfig.from_dict({"preset": "tiny", "text": {"model": "/x"}, "video": {"num_frames": 8}})
    assert cfg.video.embed_dim == 64 and cfg.video.num_frames == 8 and cfg.text.model == "/x"
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    real = ModelConfig.from_dict({})
    assert (real.video.embed_dim, real.video.depth, real.video.num_frames, real.projection_dim) == (768, 12, 4, 256)
    assert real.video.init == "vit_base_patch16_224.orig_in21k_ft_in1k" and real.text.model == "distilbert-base-uncased"
    assert real.temperature == 0.05 and real.projection == "minimal" and not real.learnable_temperature


@pytest.mark.parametrize(
    "section,message",
    [
        ({"video": {"depth": "12"}}, "model.video.depth: expected int"),
        ({"video": {"depht": 12}}, "model.video.depht: unknown key"),
        ({"text": {"pooling": "max"}}, "model.text.pooling: 'max' is not one of"),
        ({"video": {"img_size": 100}}, "model.video.img_size: 100 is not a multiple"),
        ({"temperature": 0}, "model.temperature: must be > 0"),
        ({"preset": "huge"}, "model.preset: 'huge' is not one of"),
        ({"projection": "mlp"}, "model.projection"),
    ],
)
def test_config_errors_name_the_key(section, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        ModelConfig.from_dict(section)


# ---- joint model: text pooling, projections, temperature -----------------------------------------


@pytest.fixture(scope="module")
def text_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    return {arch: str(write_tiny_text_model(root / arch, arch=arch)) for arch in ("bert", "distilbert")}


def _tiny_model(text_dir, **overrides):
    """A tiny FrozenInTime; `overrides` are model-config keys (`text` entries merge with the model path)."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(
        {"preset": "tiny", "text": {"model": text_dir, **overrides.pop("text", {})}, **overrides}
    )
    return FrozenInTime(cfg).eval()


def _tokens(text_dir, captions=("a dog runs on the beach", "two cats")):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(text_dir)(list(captions), padding=True, return_tensors="pt")


def test_original_pooling_and_projections(text_dirs):
    for arch, pooled_by in (("distilbert", "cls"), ("bert", "pooler")):
        model = _tiny_model(text_dirs[arch])
        assert model.text_pooling == pooled_by
        tok = _tokens(text_dirs[arch])
        with torch.no_grad():
            out = model.text_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            feature = out.last_hidden_state[:, 0] if arch == "distilbert" else out.pooler_output
            expected = F.linear(torch.relu(feature), model.txt_proj[1].weight, model.txt_proj[1].bias)
            torch.testing.assert_close(model.encode_text(tok["input_ids"], tok["attention_mask"]), expected)
    video = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        expected = F.linear(model.video_model(video), model.vid_proj[0].weight, model.vid_proj[0].bias)
        text_emb, video_emb = model(video, tok["input_ids"], tok["attention_mask"])
    torch.testing.assert_close(video_emb, expected)
    assert text_emb.shape == video_emb.shape == (2, 32)
    keys = list(model.state_dict())
    assert {"txt_proj.1.weight", "vid_proj.0.weight", "video_model.temporal_embed"} <= set(keys)
    assert keys[0].startswith("text_model.") and keys[-1] == "vid_proj.0.bias"


def test_mean_pooling_ignores_padding(text_dirs):
    model = _tiny_model(text_dirs["bert"], text={"pooling": "mean"})
    tok = _tokens(text_dirs["bert"], ["a dog runs on the beach", "two cats"])
    alone = _tokens(text_dirs["bert"], ["two cats"])
    with torch.no_grad():
        padded = model.encode_text(tok["input_ids"], tok["attention_mask"])[1]
        unpadded = model.encode_text(alone["input_ids"], alone["attention_mask"])[0]
    torch.testing.assert_close(padded, unpadded, rtol=1e-5, atol=1e-6)


def test_learnable_temperature_is_a_shape_1_parameter(text_dirs):
    model = _tiny_model(text_dirs["bert"], learnable_temperature=True, temperature=0.07)
    assert model.logit_scale.shape == (1,)
    assert math.isclose(float(model.temperature().detach()), 0.07, rel_tol=1e-6)
    assert "logit_scale" not in dict(_tiny_model(text_dirs["bert"]).named_parameters())


def test_minilm_weights_are_hash_checked(monkeypatch):
    assert (minilm_path() / "model.safetensors").exists()
    minilm_path.cache_clear()
    monkeypatch.setattr("models.tiny.MINILM_SAFETENSORS_SHA256", "0" * 64)
    try:
        with pytest.raises(ValueError, match="sha256"):
            minilm_path()
    finally:
        minilm_path.cache_clear()
    assert len(MINILM_SAFETENSORS_SHA256) == 64


def test_minilm_as_text_encoder_with_mean_pooling():
    path = str(minilm_path())
    model = _tiny_model(path, text={"pooling": "mean"})
    tok = _tokens(path, ["a man is playing guitar", "a man plays a guitar", "a bowl of soup"])
    with torch.no_grad():
        feats = F.normalize(
            model.text_model(**{k: tok[k] for k in ("input_ids", "attention_mask")})
            .last_hidden_state.mul(tok["attention_mask"][..., None])
            .sum(1),
            dim=-1,
        )
        emb = model.encode_text(tok["input_ids"], tok["attention_mask"])
    assert emb.shape == (3, 32)
    sims = feats @ feats.T  # a real sentence encoder: paraphrases closer than an unrelated caption
    assert sims[0, 1] > sims[0, 2] + 0.2


def test_video_config_random_init_values():
    assert VideoConfig(init="none").random_init and VideoConfig(init=None).random_init
    assert not VideoConfig().random_init


def test_time_attention_gets_only_rounding_noise_at_init():
    """With qkv = 0 and proj.weight = ones, the time output is constant over channels and enters only
    through norm1 (a LayerNorm), so qkv and proj.weight get no real gradient; proj.bias does (docs/MODELS.md)."""
    torch.manual_seed(0)
    model = SpaceTimeTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_frames=4)
    video = torch.randn(3, 4, 3, 32, 32, dtype=torch.float64)
    model = model.double()
    loss = (model(video) - torch.randn(3, 64, dtype=torch.float64)).pow(2).mean()
    loss.backward()
    for block in model.blocks:
        t = block.timeattn
        assert t.proj.weight.grad.abs().max() == 0  # its input (attention output) is 0
        assert t.qkv.weight.grad.abs().max() < 1e-12  # proj.weight^T g = channel sum of g = 0
        assert t.proj.bias.grad.abs().max() > 1e-4  # a real gradient
    assert model.temporal_embed.grad.abs().max() > 1e-4


def test_spatial_time_init_starts_as_vit_and_gets_a_real_gradient():
    """time_init "spatial": qkv copied from the spatial attention, proj = 0 -> same outputs as the
    original init at step 0, but proj.weight gets a real gradient at once."""
    torch.manual_seed(0)
    zeros = SpaceTimeTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_frames=4)
    spatial = SpaceTimeTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_frames=4)
    spatial.load_state_dict(zeros.state_dict())
    init_time_attention_all_(spatial, "spatial")
    video = torch.randn(2, 4, 3, 32, 32)
    assert torch.allclose(zeros(video), spatial(video), atol=1e-6)
    for block in spatial.blocks:
        assert torch.equal(block.timeattn.qkv.weight, block.attn.qkv.weight)
        assert torch.count_nonzero(block.timeattn.proj.weight) == 0
    spatial(video).pow(2).sum().backward()
    assert all(b.timeattn.proj.weight.grad.abs().max() > 1e-4 for b in spatial.blocks)


def test_time_residual_adds_the_time_attention_to_the_residual_stream():
    """time_residual False is the original's block (docs/ORIGINAL.md, 'Bugs' 1: x_s = x + space(norm1(x_t))); True uses
    x_s = x_t + space(norm1(x_t)). Both start equal (the time attention outputs 0 at init)."""
    from models.video_transformer import SpaceTimeBlock

    torch.manual_seed(0)
    original = SpaceTimeBlock(64, 4, mlp_ratio=2.0)
    fixed = SpaceTimeBlock(64, 4, mlp_ratio=2.0, time_residual=True)
    fixed.load_state_dict(original.state_dict())
    x = torch.randn(2, 1 + 4 * 16, 64)
    assert torch.allclose(original(x, 4), fixed(x, 4), atol=1e-6)
    with torch.no_grad():
        for block in (original, fixed):
            block.timeattn.qkv.weight.normal_(0, 0.2)
            block.timeattn.proj.weight.normal_(0, 0.2)
    for block, keep_time in ((original, False), (fixed, True)):
        x_t = x + block.timeattn(block.norm3(x), "time", 4)
        x_s = (x_t if keep_time else x) + block.attn(block.norm1(x_t), "space", 4)
        assert torch.allclose(block(x, 4), x_s + block.mlp(block.norm2(x_s)), atol=1e-5)
    assert (original(x, 4) - fixed(x, 4)).abs().max() > 1e-2


def test_time_residual_is_validated_and_reaches_every_block(text_dirs):
    with pytest.raises(ConfigError, match=r"model\.video\.time_residual"):
        ModelConfig.from_dict({"preset": "tiny", "video": {"time_residual": "yes"}})
    assert not ModelConfig.from_dict({"preset": "tiny"}).video.time_residual  # the original by default
    model = _tiny_model(text_dirs["bert"], video={"time_residual": True})
    assert all(block.time_residual for block in model.video_model.blocks)


def test_frozen_text_encoder_is_locked_and_its_projection_trains(text_dirs):
    """model.text.freeze: no gradient or optimizer state for the text encoder, no dropout even in train
    mode; the text projection and the video side train as usual."""
    from pipeline.train.optim import adamw, param_groups

    with pytest.raises(ConfigError, match=r"model\.text\.freeze"):
        ModelConfig.from_dict({"preset": "tiny", "text": {"model": text_dirs["bert"], "freeze": 1}})
    model = _tiny_model(text_dirs["bert"], text={"freeze": True}).train()
    assert not model.text_model.training and model.video_model.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = param_groups(model, 0.01)
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in model.text_model.parameters())
    optimizer = adamw(groups, 1e-2, (0.9, 0.999), 1e-8)
    tok = _tokens(text_dirs["bert"])
    for _ in range(2):  # two identical forwards give the same text embedding: no dropout
        text = model.encode_text(tok["input_ids"], tok["attention_mask"])
        assert torch.equal(text, model.encode_text(tok["input_ids"], tok["attention_mask"]))
    (text.pow(2).sum() + model.encode_video(torch.randn(2, 2, 3, 32, 32)).pow(2).sum()).backward()
    assert all(p.grad is None for p in model.text_model.parameters())
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert not any(k.startswith("text_model.") for k in changed)
    assert any(k.startswith("txt_proj.") for k in changed) and any(k.startswith("video_model.") for k in changed)


def test_time_init_is_validated_and_applied_by_the_joint_model(text_dirs):
    with pytest.raises(ConfigError, match=r"model\.video\.time_init"):
        ModelConfig.from_dict({"preset": "tiny", "video": {"time_init": "ones"}})
    model = _tiny_model(text_dirs["bert"], video={"time_init": "spatial"})
    block = model.video_model.blocks[0]
    assert torch.equal(block.timeattn.qkv.weight, block.attn.qkv.weight)
