"""FrozenInTime: the joint video/image-text dual encoder (docs/ORIGINAL.md, 'Architecture').

Parameter names match the released checkpoint: text_model.*, video_model.*, txt_proj.1.*, vid_proj.0.*.
"""

import dataclasses
import math

import torch
from torch import nn

from .config import ModelConfig
from .loss import sim_matrix
from .text import build_text_model, hidden_size, pool_text, resolve_pooling
from .video_transformer import SpaceTimeTransformer, init_time_attention_all_
from .vit_init import init_from_vit

# CLIP's cap on the learnable logit scale (1 / temperature <= 100) keeps the softmax from saturating.
MAX_LOGIT_SCALE = math.log(100.0)


class FrozenInTime(nn.Module):
    """encode_video([B,T,3,H,W] normalised floats) and encode_text(ids, mask) -> [B, projection_dim].

    Embeddings are not normalised (as the original); `similarity` and the loss normalise.
    `init_weights=False` builds the architecture only (random weights, no download), for loading
    our own or the released weights afterwards; `text_config` is then the text model's HF config.
    """

    def __init__(self, cfg: ModelConfig, init_weights: bool = True, text_config=None):
        super().__init__()
        self.config = cfg
        text_cfg = cfg.text if init_weights else dataclasses.replace(cfg.text, pretrained=False)
        # registration order = the released state_dict order
        self.text_model = build_text_model(text_cfg, hf_config=text_config)
        self.video_model = SpaceTimeTransformer.from_config(cfg.video)
        if init_weights and not cfg.video.random_init:
            init_from_vit(self.video_model, cfg.video.init)
        if cfg.video.time_init != "zeros":
            init_time_attention_all_(self.video_model, cfg.video.time_init)  # needs the final spatial qkv
        if cfg.text.freeze:
            self.text_model.requires_grad_(False)  # no gradient, no optimizer state; txt_proj still trains
        self.text_pooling = resolve_pooling(self.text_model, cfg.text.pooling)
        text_dim, video_dim = hidden_size(self.text_model), cfg.video.embed_dim
        if cfg.projection == "minimal":
            self.txt_proj = nn.Sequential(nn.ReLU(), nn.Linear(text_dim, cfg.projection_dim))  # ReLU on raw CLS
            self.vid_proj = nn.Sequential(nn.Linear(video_dim, cfg.projection_dim))
        else:
            if text_dim != video_dim:
                raise ValueError(f"model.projection: '' needs equal widths, text {text_dim} vs video {video_dim}")
            self.txt_proj, self.vid_proj = nn.Identity(), nn.Identity()
        if cfg.learnable_temperature:
            # shape (1,), not 0-dim: DeepSpeed cannot broadcast 0-dim parameters
            self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / cfg.temperature)))

    def train(self, mode: bool = True) -> "FrozenInTime":
        """As nn.Module.train, except that a frozen text encoder stays in eval mode (no dropout): a locked
        tower is a fixed function of the caption."""
        super().train(mode)
        if self.config.text.freeze:
            self.text_model.eval()
        return self

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] normalised float, T <= num_frames -> [B, D]."""
        return self.vid_proj(self.video_model(video))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids and attention mask -> [B, D]."""
        return self.txt_proj(pool_text(self.text_model, self.text_pooling, input_ids, attention_mask))

    def forward(
        self, video: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_text(input_ids, attention_mask), self.encode_video(video)

    def temperature(self) -> torch.Tensor | float:
        """The softmax temperature: the fixed config value, or exp(-logit_scale) when learnable."""
        if self.config.learnable_temperature:
            return torch.exp(-self.logit_scale.clamp(max=MAX_LOGIT_SCALE))
        return self.config.temperature

    @staticmethod
    def similarity(text_emb: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
        """Cosine similarity, rows = texts, columns = videos."""
        return sim_matrix(text_emb, video_emb)
