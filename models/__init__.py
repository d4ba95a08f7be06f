"""Frozen-in-Time models: space-time ViT + text encoder -> shared embedding, loss, checkpoints.

    from models import FrozenInTime, ModelConfig, preset
    model = FrozenInTime(ModelConfig.from_dict(run_config["model"]))
"""
from .checkpoint import load_pretrained, load_weights_into, save_pretrained
from .config import ModelConfig, TextConfig, VideoConfig, preset
from .frozen import FrozenInTime
from .loss import (NormSoftmaxLoss, distributed_norm_softmax_loss, distributed_norm_softmax_terms, norm_softmax_loss,
                   norm_softmax_terms, sim_matrix)
from .video_transformer import SpaceTimeTransformer

__all__ = ["FrozenInTime", "ModelConfig", "VideoConfig", "TextConfig", "preset", "SpaceTimeTransformer",
           "sim_matrix", "norm_softmax_loss", "norm_softmax_terms", "NormSoftmaxLoss", "distributed_norm_softmax_loss",
           "distributed_norm_softmax_terms",
           "save_pretrained", "load_pretrained", "load_weights_into"]
