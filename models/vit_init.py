"""ImageNet ViT initialisation of the SpaceTimeTransformer, through timm or a local file.

Which ViT and what the original copied: docs/ORIGINAL.md, 'Initialisation'.
The ViT's own tensors are copied by identical name; the classifier head is dropped; the temporal
part (temporal_embed, timeattn, norm3) keeps its own initialisation. Spatial attention is not
copied into time attention.
"""

import logging
import os
import re

import timm
import torch
from safetensors.torch import load_file

from .checkpoint import load_same_shapes
from .video_transformer import SpaceTimeTransformer, resize_pos_embed

log = logging.getLogger(__name__)

# ViT tensors the SpaceTimeTransformer takes, by name; everything else must be in _VIT_IGNORED.
_VIT_TAKEN = re.compile(
    r"^(cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)|"
    r"blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias))$"
)
_VIT_IGNORED = re.compile(r"^(head|fc_norm|pre_logits)\.")
# Ours that no ViT provides: they keep the space-time initialisation.
_TEMPORAL = re.compile(r"^(temporal_embed|blocks\.\d+\.(timeattn\.(qkv|proj)|norm3)\.(weight|bias))$")


def vit_state_dict(init: str) -> dict[str, torch.Tensor]:
    """The ViT weights named by `init`: a local file (.safetensors, or a torch state_dict loaded with
    weights_only=True) or a timm model name such as 'vit_base_patch16_224.orig_in21k_ft_in1k'
    (downloaded by timm from the Hugging Face hub)."""
    if os.path.isfile(init):
        if init.endswith(".safetensors"):
            return load_file(init, device="cpu")
        sd = torch.load(init, map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model"):
            if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
                sd = sd[wrapper]
        return sd
    if os.sep in init or init.endswith((".pth", ".pt", ".bin", ".safetensors")):
        raise FileNotFoundError(f"video.init: ViT weights file {init!r} does not exist")
    if not timm.is_model(init.split(".")[0]):
        raise ValueError(
            f"video.init: {init!r} is neither a file nor a timm model name "
            f"(e.g. 'vit_base_patch16_224.orig_in21k_ft_in1k')"
        )
    log.info("loading ImageNet ViT weights %s through timm", init)
    return timm.create_model(init, pretrained=True).state_dict()


def load_vit_weights(model: SpaceTimeTransformer, vit_sd: dict[str, torch.Tensor], source: str = "ViT") -> None:
    """Copy a timm-layout ViT state_dict into `model`; resample positions if the grid differs."""
    foreign = sorted(k for k in vit_sd if not _VIT_TAKEN.match(k) and not _VIT_IGNORED.match(k))
    if foreign:
        raise ValueError(
            f"{source}: tensors a SpaceTimeTransformer cannot hold: {foreign[:8]}"
            f"{' ...' if len(foreign) > 8 else ''} (expected a plain ViT with a class token)"
        )
    taken = {k: v for k, v in vit_sd.items() if _VIT_TAKEN.match(k)}
    pos = taken.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        old = int(round((pos.shape[1] - 1) ** 0.5))
        if old * old != pos.shape[1] - 1:
            raise ValueError(f"{source}: pos_embed {tuple(pos.shape)} is not CLS + a square grid")
        taken["pos_embed"] = resize_pos_embed(pos, model.grid, (old, old))
        log.info("%s: resampled pos_embed from %dx%d to %dx%d", source, old, old, *model.grid)
    result = load_same_shapes(model, taken, source, "the configured video model")
    missing = [k for k in result.missing_keys if not _TEMPORAL.match(k)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: ViT does not match the configured depth/size: missing {missing[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )


def init_from_vit(model: SpaceTimeTransformer, init: str) -> None:
    """Initialise from ImageNet ViT weights named by `init` (timm name or local file)."""
    load_vit_weights(model, vit_state_dict(init), source=init)
