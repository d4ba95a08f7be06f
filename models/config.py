"""The `model` section of a run config: video encoder, text encoder, projection and temperature.

JSON shape (every key optional; `preset` picks the defaults the other keys override):

    {"preset": "vit-b16-224",
     "video": {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12,
               "mlp_ratio": 4.0, "num_frames": 4, "qkv_bias": true,
               "init": "vit_base_patch16_224.orig_in21k_ft_in1k", "grad_checkpointing": false,
               "time_init": "zeros", "time_residual": false},
     "text": {"model": "distilbert-base-uncased", "pooling": "auto", "pretrained": true, "freeze": false},
     "projection_dim": 256, "projection": "minimal", "temperature": 0.05, "learnable_temperature": false}
"""

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Literal, get_args

from foundation import schema
from foundation.schema import ConfigError

# The config's choices live here (not beside the model code) so reading a config needs no torch.
TimeInit = Literal["zeros", "spatial"]
TIME_INITS = get_args(TimeInit)
# How checkpoint.load_temporal_fix inflates a temporal embedding with fewer rows than the model
# ("interp": the original's name for nearest; "noise": new rows drawn at TEMPORAL_NOISE_STD).
TemporalFix = Literal["zeros", "nearest", "interp", "bilinear", "noise"]
TEMPORAL_FIXES = get_args(TemporalFix)
TEMPORAL_NOISE_STD = 0.02  # the default: the scale pos_embed and cls_token start with

# The original's ImageNet-21k -> 1k ViT-B/16 (timm 0.4.5's `vit_base_patch16_224`; docs/ORIGINAL.md, 'Initialisation').
VIT_B16_IMAGENET = "vit_base_patch16_224.orig_in21k_ft_in1k"
Pooling = Literal["auto", "cls", "pooler", "mean"]
Projection = Literal["minimal", ""]
# `init` values that mean "no ImageNet weights": random initialisation.
RANDOM_INIT = (None, "", "none", "random")


@dataclass
class VideoConfig(schema.Section):
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_frames: int = 4  # the maximum T the model accepts (sizes temporal_embed)
    qkv_bias: bool = True
    init: str | None = VIT_B16_IMAGENET  # timm name, local ViT weights file, or none/random
    grad_checkpointing: bool = False
    time_init: TimeInit = "zeros"  # "zeros": the original; "spatial": learns from step one (docs/MODELS.md)
    # time_residual False: the original wiring (docs/ORIGINAL.md, 'Bugs' 1); True: time attention in the residual
    time_residual: bool = False

    @property
    def random_init(self) -> bool:
        return self.init in RANDOM_INIT

    def check(self, where: str) -> None:
        for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "num_frames"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{where}.{key}: must be a positive integer, got {getattr(self, key)}")
        if self.img_size % self.patch_size:
            raise ConfigError(f"{where}.img_size: {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"{where}.num_heads: embed_dim {self.embed_dim} is not divisible by {self.num_heads}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"{where}.mlp_ratio: must be > 0, got {self.mlp_ratio}")


@dataclass
class TextConfig(schema.Section):
    model: str = "distilbert-base-uncased"  # Hugging Face hub name or local folder
    pooling: Pooling = "auto"  # auto = the original's: CLS for DistilBERT, pooler for BERT
    pretrained: bool = True  # false: random weights from the model's config (tests)
    freeze: bool = False  # true: a locked text encoder (no gradient, eval mode); txt_proj trains

    def check(self, where: str) -> None:
        if not self.model:
            raise ConfigError(f"{where}.model: empty; give a Hugging Face name or a local model folder")


@dataclass
class ModelConfig(schema.Section):
    video: VideoConfig = field(default_factory=VideoConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection_dim: int = 256
    projection: Projection = "minimal"  # "minimal": text ReLU+Linear, video Linear; "": identity
    temperature: float = 0.05
    learnable_temperature: bool = False  # a shape-(1,) parameter (DeepSpeed cannot broadcast 0-dim)

    @classmethod
    def from_dict(cls, d: dict, where: str = "model") -> "ModelConfig":
        """Validate a config section (errors name the key path) and build the config: the keys given
        override the preset's (`preset`, default "vit-b16-224")."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected an object, got {type(d).__name__} {d!r}")
        name = d.get("preset", "vit-b16-224")
        if not isinstance(name, str) or name not in PRESETS:
            raise ConfigError(f"{where}.preset: {name!r} is not one of {list(PRESETS)}")
        merged = preset(name).to_dict()
        for key, value in d.items():
            if key in ("video", "text") and isinstance(value, dict):
                merged[key].update(value)
            elif key != "preset":
                merged[key] = value
        return schema.from_dict(cls, merged, where)

    def check(self, where: str) -> None:
        if self.projection_dim <= 0:
            raise ConfigError(f"{where}.projection_dim: must be a positive integer, got {self.projection_dim}")
        if self.temperature <= 0:
            raise ConfigError(f"{where}.temperature: must be > 0, got {self.temperature}")

    def to_dict(self) -> dict:
        """Plain JSON data; `ModelConfig.from_dict(cfg.to_dict()) == cfg`."""
        return dataclasses.asdict(self)


# ---- presets -------------------------------------------------------------------------------------


def _vit_b16_224() -> ModelConfig:
    """The released model: ViT-B/16 at 224 from ImageNet-21k->1k, 4 frames, DistilBERT, 256-d."""
    return ModelConfig()


def _tiny() -> ModelConfig:
    """Small enough for CPU tests and the demo: 32 px, 8 px patches (16 per frame), 2 blocks of width 64.

    `text.model` must point at a small text model folder, e.g. one written by
    `models.tiny.write_tiny_text_model(dir)`; until then it names the hub's DistilBERT.
    """
    return ModelConfig(
        video=VideoConfig(
            img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0, num_frames=4, init="none"
        ),
        text=TextConfig(pretrained=True),
        projection_dim=32,
    )


_PRESET_BUILDERS = {"vit-b16-224": _vit_b16_224, "tiny": _tiny}
PRESETS = tuple(_PRESET_BUILDERS)


def preset(name: str, **overrides) -> ModelConfig:
    """A named preset ("vit-b16-224" or "tiny"); keyword overrides replace top-level fields."""
    if name not in _PRESET_BUILDERS:
        raise ConfigError(f"model.preset: {name!r} is not one of {list(PRESETS)}")
    cfg = copy.deepcopy(_PRESET_BUILDERS[name]())
    return dataclasses.replace(cfg, **overrides) if overrides else cfg
