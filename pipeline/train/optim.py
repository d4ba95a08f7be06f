"""Optimizer parameter groups and learning-rate schedules.

AdamW decays only the weight matrices: norms, biases and embeddings (token / position / temporal embeddings,
the CLS token) are excluded, the usual practice for ViTs and BERTs (the original used one group with weight
decay 0, so with `weight_decay: 0` both agree). Schedules are step-based: linear warmup from 0, then constant
or cosine down to `min_lr_ratio * lr` at `total_steps`.
"""

from __future__ import annotations

import math

import torch

# Parameter names containing one of these are embeddings; they are not decayed.
NO_DECAY_NAME_PARTS = ("embed", "cls_token", "position_ids", "token_type")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm scales (all <= 1-D) and embeddings are not decayed."""
    return param.ndim <= 1 or any(part in name for part in NO_DECAY_NAME_PARTS)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weight matrices, and everything else with weight_decay 0."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if is_no_decay(name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    return [g for g in groups if g["params"]]


class LRSchedule:
    """Multiplier of the base LR at a given optimizer step (a picklable callable for LambdaLR)."""

    def __init__(self, kind: str, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0):
        if kind not in ("constant", "cosine"):
            raise ValueError(f"unknown LR schedule {kind!r} (constant, cosine)")
        self.kind, self.total_steps = kind, total_steps
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw(groups: list[dict], lr: float, betas: tuple[float, float], eps: float) -> torch.optim.AdamW:
    """torch's AdamW (no JIT-built fused kernel on CPU; deterministic); foreach off for bit-stable resumes."""
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=False)


def lambda_lr(schedule: LRSchedule):
    """A DeepSpeed scheduler callable: DeepSpeed hands it the (wrapped) optimizer after initialising."""
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
