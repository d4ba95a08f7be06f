"""Frozen-in-Time models: space-time ViT + text encoder -> shared embedding, loss, checkpoints.

    from models import FrozenInTime, ModelConfig, preset
    model = FrozenInTime(ModelConfig.from_dict(run_config["model"]))

The names below load their submodule on first use (PEP 562), so that `from models import ModelConfig` (or
reading a run config) does not import torch; everything else here needs it.
"""

import importlib

_SUBMODULE = {
    "FrozenInTime": "frozen",
    "ModelConfig": "config",
    "VideoConfig": "config",
    "TextConfig": "config",
    "preset": "config",
    "SpaceTimeTransformer": "video_transformer",
    "sim_matrix": "loss",
    "norm_softmax_loss": "loss",
    "norm_softmax_terms": "loss",
    "NormSoftmaxLoss": "loss",
    "distributed_norm_softmax_loss": "loss",
    "distributed_norm_softmax_terms": "loss",
    "save_pretrained": "checkpoint",
    "load_pretrained": "checkpoint",
    "load_weights_into": "checkpoint",
}
__all__ = list(_SUBMODULE)


def __getattr__(name: str):
    if name not in _SUBMODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_SUBMODULE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
