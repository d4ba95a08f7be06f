"""Similarity and the NormSoftmax contrastive loss (spec 2), single-process and across ranks.

The distributed form gathers the (normalised) embeddings of every rank with autograd and has each
rank score only its own rows against all columns, which is the memory-lean form: [n, N] logits per
rank instead of [N, N]. Its value is scaled so that the mean over ranks -- what DDP and DeepSpeed
do to gradients -- equals the full-batch loss and gradient exactly, even for unequal per-rank batches.
"""
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def sim_matrix(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity [len(a), len(b)]; each row is divided by max(its L2 norm, eps)."""
    return _normalize(a, eps) @ _normalize(b, eps).t()


def norm_softmax_loss(sim: torch.Tensor, temperature: float | torch.Tensor = 0.05) -> torch.Tensor:
    """The original NormSoftmaxLoss on a square [text, video] similarity matrix: the SUM of the
    text->video and video->text cross entropies with the diagonal as positives."""
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"norm_softmax_loss needs a square [text, video] matrix of pairs, got {tuple(sim.shape)}")
    labels = torch.arange(sim.shape[0], device=sim.device)
    logits = sim / temperature
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)


class NormSoftmaxLoss(nn.Module):
    """Module form of `norm_softmax_loss` with the temperature fixed at construction (0.05)."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature

    def forward(self, sim: torch.Tensor) -> torch.Tensor:
        return norm_softmax_loss(sim, self.temperature)


def gather_with_grad(xs: list[torch.Tensor], group=None) -> tuple[list[torch.Tensor], int, int, int]:
    """All-gather tensors along dim 0 from every rank, keeping autograd to each rank's slice.

    Returns (gathered tensors, this rank's row offset, total rows, world size). Per-rank row counts may differ:
    rows are padded to the largest count for the collective and the padding is cut off again.
    Without an initialised process group (or with one rank) the inputs come back unchanged.
    """
    n = xs[0].shape[0]
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return xs, 0, n, 1
    import torch.distributed.nn.functional as dist_nn
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    counts = [torch.zeros(1, dtype=torch.long, device=xs[0].device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([n], dtype=torch.long, device=xs[0].device), group=group)
    counts = [int(c.item()) for c in counts]
    most = max(counts)
    gathered = []
    for x in xs:
        padded = F.pad(x, (0, 0, 0, most - n)) if n < most else x
        with warnings.catch_warnings():
            # deprecated in torch 2.14 for a private replacement; it remains the public autograd gather
            warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
            parts = dist_nn.all_gather(padded, group=group)
        gathered.append(torch.cat([p[:c] for p, c in zip(parts, counts)], dim=0))
    return gathered, sum(counts[:rank]), sum(counts), world


def distributed_norm_softmax_loss(text_emb: torch.Tensor, video_emb: torch.Tensor,
                                  temperature: float | torch.Tensor = 0.05, group=None) -> torch.Tensor:
    """NormSoftmax over the global batch (negatives from every rank), this rank's share.

    text_emb, video_emb: [n, D] local embeddings, pair i = (text i, video i). Each rank computes the
    cross entropy of its n text rows against all N videos and of its n video rows against all N texts;
    the sum is scaled by world/N so that the mean over ranks equals the full-batch NormSoftmax loss
    (and the DDP/DeepSpeed-averaged gradient equals the full-batch gradient). With one process it is
    exactly `norm_softmax_loss(sim_matrix(text_emb, video_emb), temperature)`.
    To log the global loss, average this value over ranks.
    """
    if text_emb.shape[0] != video_emb.shape[0]:
        raise ValueError(f"text and video batches differ: {text_emb.shape[0]} vs {video_emb.shape[0]}")
    t, v = _normalize(text_emb), _normalize(video_emb)
    (t_all, v_all), offset, total, world = gather_with_grad([t, v], group)
    labels = torch.arange(offset, offset + t.shape[0], device=t.device)
    t2v = F.cross_entropy(t @ v_all.t() / temperature, labels, reduction="sum")   # [n, N] logits
    v2t = F.cross_entropy(v @ t_all.t() / temperature, labels, reduction="sum")   # [n, N] logits
    return (t2v + v2t) * (world / total)
