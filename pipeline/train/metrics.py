"""Retrieval metrics with the original's conventions (docs/ORIGINAL.md, 'Metrics').

The similarity matrix is text x video (rows are captions, columns are videos); `caption_video[i]` says which
video caption i describes, so a video may have several captions (or one), in any order.

- text-to-video: the rank of a caption's video in its row, ties broken optimistically (the number of videos
  scoring strictly higher), as the original's `t2v_metrics`.
- video-to-text: for each of the video's captions, the rank of that caption in the video's column with ties
  broken by averaging the tied positions; the video's rank is the best (minimum) over its captions (VSE
  convention), as the original's `v2t_metrics`.
- R@1 = 100 * mean(rank == 0) and R@K = 100 * mean(rank < K) for K > 1 (0-based ranks), exactly as the
  original's `cols2metrics`: under averaged ties a rank of 0.5 (the right caption tied for first with
  another) is no R@1 hit, while 4.5 still counts for R@5. MedR = median(rank) + 1, MeanR = mean(rank) + 1,
  and the geometric mean of R1, R5, R10.

The original needs texts ordered video-major with the same count per video; an explicit `caption_video`
index is equivalent for that layout and also serves videos with differing caption counts.

Which texts are the rows is the benchmark's protocol, chosen by the eval dataset's `caption_mode`
(docs/TRAINING.md, 'Benchmarks'): one caption per video (MSR-VTT 1k-A, LSMDC: a square matrix), every
caption of a video its own row (MSVD: t2v counts each caption-video pair once, over the gallery of distinct
videos, as the original's author counted MSVD; v2t takes each video's best caption), or one paragraph per
video (DiDeMo: square again).
"""

from __future__ import annotations

import numpy as np

RECALL_AT = (1, 5, 10, 50)
METRIC_NAMES = tuple(f"R{k}" for k in RECALL_AT) + ("MedR", "MeanR", "geometric_mean_R1-R5-R10")


def cosine_similarity(text_emb: np.ndarray, video_emb: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """The original's `sim_matrix`: rows divided by max(norm, eps), then a_n @ b_n^T (float32)."""
    a = np.asarray(text_emb, dtype=np.float32)
    b = np.asarray(video_emb, dtype=np.float32)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), eps)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), eps)
    return a @ b.T


def _check(sims: np.ndarray, caption_video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sims = np.asarray(sims)
    caption_video = np.asarray(caption_video, dtype=np.int64)
    if sims.ndim != 2:
        raise ValueError(f"similarity matrix must be 2-D (texts x videos), got shape {sims.shape}")
    if caption_video.shape != (sims.shape[0],):
        raise ValueError(f"caption_video has shape {caption_video.shape}, expected ({sims.shape[0]},)")
    if caption_video.size and (caption_video.min() < 0 or caption_video.max() >= sims.shape[1]):
        raise ValueError("caption_video holds a video index outside the similarity matrix")
    without = np.setdiff1d(np.arange(sims.shape[1]), caption_video)
    if without.size:
        raise ValueError(f"{without.size} video(s) have no caption (first: column {without[0]})")
    return sims, caption_video


def t2v_ranks(sims: np.ndarray, caption_video: np.ndarray) -> np.ndarray:
    """0-based rank of each caption's video among all videos; ties optimistic."""
    sims, caption_video = _check(sims, caption_video)
    gt = sims[np.arange(sims.shape[0]), caption_video][:, None]
    return (sims > gt).sum(axis=1).astype(np.float64)


def v2t_ranks(sims: np.ndarray, caption_video: np.ndarray) -> np.ndarray:
    """0-based rank of each video's best caption among all captions; ties averaged over tied positions."""
    sims, caption_video = _check(sims, caption_video)
    ranks = np.empty(sims.shape[1], dtype=np.float64)
    for video in range(sims.shape[1]):
        column = sims[:, video]
        own = column[caption_video == video][:, None]  # [C_v, 1]
        higher = (column[None, :] > own).sum(axis=1)
        tied = (column[None, :] == own).sum(axis=1)  # includes the caption itself
        ranks[video] = (higher + (tied - 1) / 2.0).min()  # mean of positions higher..higher+tied-1
    return ranks


def ranks_to_metrics(ranks: np.ndarray) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no queries to score")
    metrics = {f"R{k}": float(100.0 * np.mean(ranks == 0 if k == 1 else ranks < k)) for k in RECALL_AT}
    metrics["MedR"] = float(np.median(ranks) + 1)
    metrics["MeanR"] = float(np.mean(ranks) + 1)
    r1_r5_r10 = np.array([metrics["R1"], metrics["R5"], metrics["R10"]])
    metrics["geometric_mean_R1-R5-R10"] = float(np.prod(r1_r5_r10) ** (1.0 / 3.0))
    return metrics


def retrieval_metrics(sims: np.ndarray, caption_video: np.ndarray | None = None) -> dict[str, float]:
    """`{"t2v_R1": ..., "v2t_MedR": ...}` for a text x video similarity matrix (square: caption i <-> video i)."""
    sims = np.asarray(sims)
    if caption_video is None:
        if sims.shape[0] != sims.shape[1]:
            raise ValueError(f"a {sims.shape} similarity matrix needs caption_video (which video each row describes)")
        caption_video = np.arange(sims.shape[0])
    out = {f"t2v_{k}": v for k, v in ranks_to_metrics(t2v_ranks(sims, caption_video)).items()}
    out.update({f"v2t_{k}": v for k, v in ranks_to_metrics(v2t_ranks(sims, caption_video)).items()})
    return out
