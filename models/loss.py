"""Similarity and the NormSoftmax contrastive loss (docs/ORIGINAL.md, 'Loss'), single-process and across ranks.

The distributed form gathers the (normalised) embeddings of every rank with autograd and has each
rank score only its own rows against all columns, which is the memory-lean form: [n, N] logits per
rank instead of [N, N]. Its value is scaled so that the mean over ranks -- what DDP and DeepSpeed
do to gradients -- equals the full-batch loss and gradient exactly, even for unequal per-rank batches.
"""

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import nn


def _normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def sim_matrix(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity [len(a), len(b)]; each row is divided by max(its L2 norm, eps)."""
    return _normalize(a, eps) @ _normalize(b, eps).t()


def norm_softmax_terms(
    sim: torch.Tensor, temperature: float | torch.Tensor = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original NormSoftmaxLoss's two terms (L_t2v, L_v2t) on a [texts, videos] similarity matrix.

    The pairs are the diagonal (i, i) for i < min(texts, videos), as the original takes them with `torch.diag`,
    so a non-square matrix is accepted as the original accepts it: L_t2v is the mean over those texts of the
    cross entropy over all videos, L_v2t the mean over those videos of the cross entropy over all texts.
    """
    if sim.dim() != 2 or 0 in sim.shape:
        raise ValueError(f"norm_softmax_terms needs a non-empty 2-D [text, video] matrix, got {tuple(sim.shape)}")
    pairs = min(sim.shape)
    labels = torch.arange(pairs, device=sim.device)
    logits = sim / temperature
    return F.cross_entropy(logits[:pairs], labels), F.cross_entropy(logits.t()[:pairs], labels)


def norm_softmax_loss(sim: torch.Tensor, temperature: float | torch.Tensor = 0.05) -> torch.Tensor:
    """The original NormSoftmaxLoss: the SUM L_t2v + L_v2t of `norm_softmax_terms`."""
    t2v, v2t = norm_softmax_terms(sim, temperature)
    return t2v + v2t


class NormSoftmaxLoss(nn.Module):
    """Module form of `norm_softmax_loss` with the temperature fixed at construction (0.05)."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature

    def forward(self, sim: torch.Tensor, return_terms: bool = False):
        """The loss; with return_terms, (loss, L_t2v, L_v2t)."""
        t2v, v2t = norm_softmax_terms(sim, self.temperature)
        return (t2v + v2t, t2v, v2t) if return_terms else t2v + v2t


def gather_with_grad(xs: list[torch.Tensor], group=None) -> tuple[list[torch.Tensor], int, int, int]:
    """All-gather tensors along dim 0 from every rank, keeping autograd to each rank's slice.

    Returns (gathered tensors, this rank's row offset, total rows, world size). Per-rank row counts may differ:
    rows are padded to the largest count for the collective and the padding is cut off again.
    Without an initialised process group (or with one rank) the inputs come back unchanged.
    """
    n = xs[0].shape[0]
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return xs, 0, n, 1
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


def distributed_norm_softmax_terms(
    text_emb: torch.Tensor, video_emb: torch.Tensor, temperature: float | torch.Tensor = 0.05, group=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """NormSoftmax over the global batch (negatives from every rank): this rank's shares of (L_t2v, L_v2t).

    text_emb, video_emb: [n, D] local embeddings, pair i = (text i, video i). Each rank computes the
    cross entropy of its n text rows against all N videos and of its n video rows against all N texts;
    each sum is scaled by world/N so that the mean over ranks equals the full-batch term (and the
    DDP/DeepSpeed-averaged gradient equals the full-batch gradient). With one process they are exactly
    `norm_softmax_terms(sim_matrix(text_emb, video_emb), temperature)`. To log the global terms, average
    these values over ranks.
    """
    if text_emb.shape[0] != video_emb.shape[0]:
        raise ValueError(f"text and video batches differ: {text_emb.shape[0]} vs {video_emb.shape[0]}")
    t, v = _normalize(text_emb), _normalize(video_emb)
    (t_all, v_all), offset, total, world = gather_with_grad([t, v], group)
    labels = torch.arange(offset, offset + t.shape[0], device=t.device)
    t2v = F.cross_entropy(t @ v_all.t() / temperature, labels, reduction="sum")  # [n, N] logits
    v2t = F.cross_entropy(v @ t_all.t() / temperature, labels, reduction="sum")  # [n, N] logits
    return t2v * (world / total), v2t * (world / total)


def distributed_norm_softmax_loss(
    text_emb: torch.Tensor, video_emb: torch.Tensor, temperature: float | torch.Tensor = 0.05, group=None
) -> torch.Tensor:
    """This rank's share of the global NormSoftmax loss: the sum of `distributed_norm_softmax_terms`."""
    t2v, v2t = distributed_norm_softmax_terms(text_emb, video_emb, temperature, group)
    return t2v + v2t
