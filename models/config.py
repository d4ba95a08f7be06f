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

from foundation.schema import ConfigError, check_keys, get_typed

# kept here (not imported from the model) so reading a config needs no torch
TIME_INITS = ("zeros", "spatial")

# The original's ImageNet-21k -> 1k ViT-B/16 (timm 0.4.5's `vit_base_patch16_224`; docs/ORIGINAL.md, 'Initialisation').
VIT_B16_IMAGENET = "vit_base_patch16_224.orig_in21k_ft_in1k"
POOLINGS = ("auto", "cls", "pooler", "mean")
PROJECTIONS = ("minimal", "")
# `init` values that mean "no ImageNet weights": random initialisation.
RANDOM_INIT = (None, "", "none", "random")


@dataclass
class VideoConfig:
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_frames: int = 4            # the maximum T the model accepts (sizes temporal_embed)
    qkv_bias: bool = True
    init: str | None = VIT_B16_IMAGENET   # timm name, local ViT weights file, or none/random
    grad_checkpointing: bool = False
    time_init: str = "zeros"       # "zeros": the original; "spatial": learns from step one (docs/MODELS.md)
    # time_residual False: the original wiring (docs/ORIGINAL.md, 'Bugs' 1); True: time attention in the residual
    time_residual: bool = False

    @property
    def random_init(self) -> bool:
        return self.init in RANDOM_INIT


@dataclass
class TextConfig:
    model: str = "distilbert-base-uncased"   # Hugging Face hub name or local folder
    pooling: str = "auto"                     # auto = the original's: CLS for DistilBERT, pooler for BERT
    pretrained: bool = True                   # false: random weights from the model's config (tests)
    freeze: bool = False                      # true: a locked text encoder (no gradient, eval mode); txt_proj trains


@dataclass
class ModelConfig:
    video: VideoConfig = field(default_factory=VideoConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection_dim: int = 256
    projection: str = "minimal"               # "minimal": text ReLU+Linear, video Linear; "": identity
    temperature: float = 0.05
    learnable_temperature: bool = False       # a shape-(1,) parameter (DeepSpeed cannot broadcast 0-dim)

    @classmethod
    def from_dict(cls, d: dict, where: str = "model") -> "ModelConfig":
        """Validate a config section (errors name the key path) and build the config."""
        check_keys(d, where, optional=("preset", "video", "text", "projection_dim", "projection",
                                       "temperature", "learnable_temperature"))
        base = preset(get_typed(d, "preset", str, where, default="vit-b16-224", choices=PRESETS))
        merged = base.to_dict()
        for section in ("video", "text"):
            if section in d:
                check_keys(d[section], f"{where}.{section}", optional=merged[section].keys())
                merged[section].update(d[section])
        merged.update({k: v for k, v in d.items() if k not in ("preset", "video", "text")})
        return cls._from_merged(merged, where)

    @classmethod
    def _from_merged(cls, m: dict, where: str) -> "ModelConfig":
        v, t, vw, tw = m["video"], m["text"], f"{where}.video", f"{where}.text"
        video = VideoConfig(
            img_size=_positive(v, "img_size", vw), patch_size=_positive(v, "patch_size", vw),
            embed_dim=_positive(v, "embed_dim", vw), depth=_positive(v, "depth", vw),
            num_heads=_positive(v, "num_heads", vw),
            mlp_ratio=float(get_typed(v, "mlp_ratio", (int, float), vw)),
            num_frames=_positive(v, "num_frames", vw), qkv_bias=get_typed(v, "qkv_bias", bool, vw),
            init=get_typed(v, "init", (str, type(None)), vw),
            grad_checkpointing=get_typed(v, "grad_checkpointing", bool, vw),
            time_init=get_typed(v, "time_init", str, vw, choices=TIME_INITS),
            time_residual=get_typed(v, "time_residual", bool, vw))
        if video.img_size % video.patch_size:
            raise ConfigError(f"{vw}.img_size: {video.img_size} is not a multiple of patch_size {video.patch_size}")
        if video.embed_dim % video.num_heads:
            raise ConfigError(f"{vw}.num_heads: embed_dim {video.embed_dim} is not divisible by {video.num_heads}")
        if video.mlp_ratio <= 0:
            raise ConfigError(f"{vw}.mlp_ratio: must be > 0, got {video.mlp_ratio}")
        text = TextConfig(model=get_typed(t, "model", str, tw), pretrained=get_typed(t, "pretrained", bool, tw),
                          pooling=get_typed(t, "pooling", str, tw, choices=POOLINGS),
                          freeze=get_typed(t, "freeze", bool, tw))
        if not text.model:
            raise ConfigError(f"{tw}.model: empty; give a Hugging Face name or a local model folder")
        temperature = float(get_typed(m, "temperature", (int, float), where))
        if temperature <= 0:
            raise ConfigError(f"{where}.temperature: must be > 0, got {temperature}")
        return cls(video=video, text=text, projection_dim=_positive(m, "projection_dim", where),
                   projection=get_typed(m, "projection", str, where, choices=PROJECTIONS),
                   temperature=temperature,
                   learnable_temperature=get_typed(m, "learnable_temperature", bool, where))

    def to_dict(self) -> dict:
        """Plain JSON data; `ModelConfig.from_dict(cfg.to_dict()) == cfg`."""
        return dataclasses.asdict(self)


def _positive(section: dict, key: str, where: str) -> int:
    value = get_typed(section, key, int, where)
    if value <= 0:
        raise ConfigError(f"{where}.{key}: must be a positive integer, got {value}")
    return value


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
        video=VideoConfig(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0,
                          num_frames=4, init="none"),
        text=TextConfig(pretrained=True), projection_dim=32)


_PRESET_BUILDERS = {"vit-b16-224": _vit_b16_224, "tiny": _tiny}
PRESETS = tuple(_PRESET_BUILDERS)


def preset(name: str, **overrides) -> ModelConfig:
    """A named preset ("vit-b16-224" or "tiny"); keyword overrides replace top-level fields."""
    if name not in _PRESET_BUILDERS:
        raise ConfigError(f"model.preset: {name!r} is not one of {list(PRESETS)}")
    cfg = copy.deepcopy(_PRESET_BUILDERS[name]())
    return dataclasses.replace(cfg, **overrides) if overrides else cfg
