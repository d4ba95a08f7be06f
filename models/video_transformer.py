"""The Frozen-in-Time space-time ViT (docs/ORIGINAL.md, 'Architecture'), with grouped attention on SDPA kernels.

Tokens are [CLS, frame 0 patches, frame 1 patches, ...] (frame-major, row-major inside a frame).
Each block runs time attention, then space attention, then the MLP, with the original's residual
wiring (the time output reaches the stream only through the space attention's input):

    x_t = x + timeattn(norm3(x))          # patches: CLS + same location in every frame
    x   = x + attn(norm1(x_t))            # patches: CLS + same frame
    x   = x + mlp(norm2(x))

In both attentions the CLS query attends to every token. Parameter names match the released
checkpoint's `video_model.*` keys (docs/ORIGINAL.md, 'Released checkpoint').
"""

import math
from typing import Callable

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import TIME_INITS

ATTENTION_IMPLS = ("sdpa", "explicit")


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with the probability matrix materialised, as the original computes it."""
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return attn.softmax(dim=-1) @ v


ATTENTION_KERNELS: dict[str, Callable] = {"sdpa": F.scaled_dot_product_attention, "explicit": explicit_attention}


def grouped_attention(qkv: torch.Tensor, group: str, num_frames: int, attend: Callable) -> torch.Tensor:
    """The original's VarAttention on split heads (docs/ORIGINAL.md, 'Architecture').

    qkv: [B, N, 3, H, d] with N = 1 + F*n. Returns [B, N, H*d].
    group "time": patch queries attend to CLS + the same patch location in every frame (groups of F);
    group "space": patch queries attend to CLS + the patches of their frame (groups of n).
    """
    B, N, _, H, d = qkv.shape
    f = num_frames
    n = (N - 1) // f
    # CLS query against every key and value
    q_all, k_all, v_all = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, N, d]
    cls_out = attend(q_all[:, :, :1], k_all, v_all)  # [B, H, 1, d]

    patches = qkv[:, 1:].reshape(B, f, n, 3, H, d)
    if group == "space":
        patches = patches.permute(3, 0, 1, 4, 2, 5)  # [3, B, f, H, n, d]
        groups, length = f, n
    elif group == "time":
        patches = patches.permute(3, 0, 2, 4, 1, 5)  # [3, B, n, H, f, d]
        groups, length = n, f
    else:
        raise ValueError(f"group must be 'time' or 'space', got {group!r}")
    q, k, v = patches.reshape(3, B * groups, H, length, d).unbind(0)  # [B*G, H, L, d]
    # CLS key/value prepended to every group's keys/values (batch-outer, group-inner order)
    cls_kv = qkv[:, :1, 1:].permute(2, 0, 1, 3, 4).unsqueeze(4)  # [2, B, 1, H, 1, d]
    cls_kv = cls_kv.expand(2, B, groups, H, 1, d).reshape(2, B * groups, H, 1, d)
    k = torch.cat([cls_kv[0], k], dim=2)  # [B*G, H, L+1, d]
    v = torch.cat([cls_kv[1], v], dim=2)
    out = attend(q, k, v).reshape(B, groups, H, length, d)
    if group == "space":
        out = out.permute(0, 1, 3, 2, 4)  # [B, f, n, H, d]
    else:
        out = out.permute(0, 3, 1, 2, 4)  # [B, f, n, H, d]
    out = out.reshape(B, f * n, H * d)
    return torch.cat([cls_out.transpose(1, 2).reshape(B, 1, H * d), out], dim=1)


class VarAttention(nn.Module):
    """Multi-head attention over one grouping (time or space) of the space-time tokens."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_impl: str = "sdpa"):
        super().__init__()
        if attn_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTENTION_IMPLS}, got {attn_impl!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)  # rows [q | k | v], each head-major (H, d)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, group: str, num_frames: int) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        return self.proj(grouped_attention(qkv, group, num_frames, ATTENTION_KERNELS[self.attn_impl]))


def init_time_attention_(attn: VarAttention, mode: str = "zeros", spatial: VarAttention | None = None) -> None:
    """Time attention starts with output 0, so every block starts as a plain ViT block.

    "zeros" (the original): qkv = 0 and proj.weight = 1 (all ones). The original meant the ones to let
    gradients reach qkv, but they do not: the output is then constant over channels and enters only
    through norm1 (a LayerNorm), so qkv and proj.weight get no gradient beyond rounding noise, which
    Adam amplifies slowly (docs/MODELS.md). Kept as the default: the released weights came from it.
    "spatial": qkv = the block's spatial attention qkv (ImageNet-trained after a ViT init), proj = 0.
    The output is 0 as well, but proj.weight's gradient (g a^T, a != 0) is real from the first step.
    """
    if mode not in TIME_INITS:
        raise ValueError(f"time init must be one of {TIME_INITS}, got {mode!r}")
    with torch.no_grad():
        if mode == "zeros":
            attn.qkv.weight.zero_()
            if attn.qkv.bias is not None:
                attn.qkv.bias.zero_()
            attn.proj.weight.fill_(1.0)
        else:
            attn.qkv.load_state_dict(spatial.qkv.state_dict())
            attn.proj.weight.zero_()
        attn.proj.bias.zero_()


def init_time_attention_all_(model: "SpaceTimeTransformer", mode: str) -> None:
    """Apply `init_time_attention_` to every block (after the spatial weights are final)."""
    for block in model.blocks:
        init_time_attention_(block.timeattn, mode, spatial=block.attn)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SpaceTimeBlock(nn.Module):
    """Divided space-time block. `time_residual` False is the original's wiring (docs/ORIGINAL.md, 'Bugs' 1): the time
    attention output reaches the residual stream only through the spatial attention's input, so a
    frame-order feature needs two hops (time attention -> space attention values) to survive. True adds
    it to the residual as well (x_s = x_t + spatial(norm1(x_t))), which the released weights never saw."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        attn_impl: str = "sdpa",
        time_residual: bool = False,
    ):
        super().__init__()
        self.time_residual = time_residual
        # registration order = the released state_dict order
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = VarAttention(dim, num_heads, qkv_bias, attn_impl)
        self.timeattn = VarAttention(dim, num_heads, qkv_bias, attn_impl)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        init_time_attention_(self.timeattn)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        x_t = x + self.timeattn(self.norm3(x), "time", num_frames)
        # the original adds the space attention to x, not x_t (docs/ORIGINAL.md, 'Bugs' 1)
        base = x_t if self.time_residual else x
        x = base + self.attn(self.norm1(x_t), "space", num_frames)
        return x + self.mlp(self.norm2(x))


class VideoPatchEmbed(nn.Module):
    """One Conv2d over every frame: [B, T, C, H, W] -> frame-major tokens [B, T*n, D]."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        B, T = video.shape[:2]
        x = self.proj(video.flatten(0, 1))  # [B*T, D, gh, gw]
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # [B*T, n, D]
        return x.reshape(B, T * x.shape[1], x.shape[2]), grid


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resampling of the spatial part of [1, 1 + gh*gw, D]; the CLS row is kept as is."""
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    return resample_abs_pos_embed(pos_embed, new_size=list(new_grid), old_size=list(old_grid), num_prefix_tokens=1)


class SpaceTimeTransformer(nn.Module):
    """Video [B, T, 3, H, W] (T <= num_frames, normalised floats) -> CLS feature [B, embed_dim]."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        num_frames: int = 4,
        attn_impl: str = "sdpa",
        grad_checkpointing: bool = False,
        time_residual: bool = False,
    ):
        super().__init__()
        self.num_frames = num_frames
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.grad_checkpointing = grad_checkpointing
        n = self.grid[0] * self.grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n, embed_dim))  # CLS + spatial positions
        # starts at zeros as the original's (docs/ORIGINAL.md, 'Initialisation')
        self.temporal_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.patch_embed = VideoPatchEmbed(patch_size, in_chans, embed_dim)
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, attn_impl, time_residual) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        init_random_(self)

    @classmethod
    def from_config(cls, video_cfg, attn_impl: str = "sdpa") -> "SpaceTimeTransformer":
        c = video_cfg
        return cls(
            img_size=c.img_size,
            patch_size=c.patch_size,
            embed_dim=c.embed_dim,
            depth=c.depth,
            num_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio,
            qkv_bias=c.qkv_bias,
            num_frames=c.num_frames,
            attn_impl=attn_impl,
            grad_checkpointing=c.grad_checkpointing,
            time_residual=c.time_residual,
        )

    def set_attn_impl(self, attn_impl: str) -> None:
        """Switch every attention between the SDPA kernels and the explicit-softmax formulation."""
        if attn_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTENTION_IMPLS}, got {attn_impl!r}")
        for m in self.modules():
            if isinstance(m, VarAttention):
                m.attn_impl = attn_impl

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] -> normed tokens [B, 1 + T*n, D]."""
        if video.dim() != 5:
            raise ValueError(f"video must be [B, T, C, H, W], got shape {tuple(video.shape)}")
        B, T, _, H, W = video.shape
        if T > self.num_frames:
            raise ValueError(f"{T} frames given but the model takes at most num_frames={self.num_frames}")
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"frame size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        x, grid = self.patch_embed(video)  # [B, T*n, D]
        n = grid[0] * grid[1]
        pos = resize_pos_embed(self.pos_embed, grid, self.grid)  # [1, 1+n, D]
        # spatial positions tiled over frames + temporal embeddings repeated over patches
        patch_pos = pos[:, 1:].repeat(1, T, 1) + self.temporal_embed[:, :T].repeat_interleave(n, dim=1)
        cls = (self.cls_token + pos[:, :1]).expand(B, -1, -1)  # CLS: no temporal embedding
        x = torch.cat([cls, x + patch_pos], dim=1)  # [B, 1+T*n, D]
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, T, use_reentrant=False)
            else:
                x = block(x, T)
        return self.norm(x)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_features(video)[:, 0]


def init_random_(model: SpaceTimeTransformer) -> None:
    """Random initialisation (no ImageNet weights): truncated normal 0.02 for linear layers, CLS and
    positions; temporal embeddings zero; time attention gets its zero init in every block.

    The original applied this only for num_frames == 1 and then also wiped the time-attention zero
    init (docs/ORIGINAL.md, 'Bugs' 3); here the zero init always holds, so a block starts as a ViT block whatever T is.
    """
    nn.init.trunc_normal_(model.pos_embed, std=0.02)
    nn.init.trunc_normal_(model.cls_token, std=0.02)
    with torch.no_grad():
        model.temporal_embed.zero_()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    fan_in = model.patch_embed.proj.in_channels * model.patch_size**2
    nn.init.trunc_normal_(model.patch_embed.proj.weight, std=math.sqrt(1.0 / fan_in))
    nn.init.zeros_(model.patch_embed.proj.bias)
    init_time_attention_all_(model, "zeros")
