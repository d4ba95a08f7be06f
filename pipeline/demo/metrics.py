"""The demo's query sets: text-to-video on the held-out clips, overall, among clips that differ only in
motion, and by appearance (docs/DEMO.md).

Given the embeddings of the test clips and of their (canonical, unique) captions, and each clip's shape,
colour and motion:

- overall: caption i against all N clips; the hit is clip i (the project's `t2v` metrics).
- motion-only: caption i against the clips that share clip i's shape and colour (one clip per motion, so
  they differ only in motion and in nuisances: background, position, size, angle); the hit is clip i. A
  model blind to motion ranks these candidates at random: chance R@1 = 1 / group size.
- appearance: caption i against all N clips; the hit is the best-ranked clip of the right shape AND colour,
  whatever its motion (does the model see shape and colour at all?).

Ranks are 0-based, ties broken optimistically (as `pipeline.train.metrics.t2v_ranks`); R@K = 100 * mean(rank < K),
MedR = median(rank) + 1. Chance levels are exact expectations for a random ordering.
"""

from __future__ import annotations

from math import comb

import numpy as np

from pipeline.train.metrics import cosine_similarity, t2v_ranks

RECALLS = (1, 5)


def summarize(ranks: np.ndarray) -> dict[str, float]:
    ranks = np.asarray(ranks, np.float64)
    out = {f"R{k}": float(100.0 * np.mean(ranks < k)) for k in RECALLS}
    out["MedR"] = float(np.median(ranks) + 1)
    out["queries"] = int(ranks.size)
    return out


def motion_only_ranks(sims: np.ndarray, groups: list) -> np.ndarray:
    """Rank of clip i for caption i among the clips j with groups[j] == groups[i] (sims: captions x clips,
    caption i describes clip i)."""
    groups = np.asarray([str(g) for g in groups])
    ranks = np.empty(len(groups))
    for i in range(len(groups)):
        candidates = np.flatnonzero(groups == groups[i])
        ranks[i] = (sims[i, candidates] > sims[i, i]).sum()
    return ranks


def appearance_ranks(sims: np.ndarray, groups: list) -> np.ndarray:
    """Rank of the best-scoring clip of caption i's group among all clips (0 when it comes first)."""
    groups = np.asarray([str(g) for g in groups])
    ranks = np.empty(len(groups))
    for i in range(len(groups)):
        best = sims[i, groups == groups[i]].max()
        ranks[i] = (sims[i] > best).sum()
    return ranks


def chance_uniform(n: int) -> dict[str, float]:
    """A hit at a uniformly random rank among n candidates."""
    ranks = np.arange(n)
    return {f"R{k}": 100.0 * min(k, n) / n for k in RECALLS} | {"MedR": float(np.median(ranks) + 1)}


def chance_first_of(n: int, good: int) -> dict[str, float]:
    """The first of `good` hits among n candidates in random order: P(rank >= r) = C(n-r, good) / C(n, good)."""
    survive = np.array([comb(n - r, good) / comb(n, good) for r in range(n + 1)])  # P(first hit rank >= r)
    out = {f"R{k}": 100.0 * (1 - survive[min(k, n)]) for k in RECALLS}
    cdf = 1 - survive[1:]  # P(rank <= r - 1), r = 1..n
    out["MedR"] = float(np.argmax(cdf >= 0.5) + 1)
    return out


def demo_query_metrics(text_emb: np.ndarray, video_emb: np.ndarray, rows: list[dict]) -> dict[str, dict]:
    """{query set: {R1, R5, MedR, queries, chance: {...}}} for the held-out clips.

    `rows[i]` describes clip i (and its caption i) with keys shape, colour, motion, held_out.
    """
    if not (len(rows) == len(text_emb) == len(video_emb)):
        raise ValueError(f"{len(rows)} rows, {len(text_emb)} captions, {len(video_emb)} clips: they must match")
    sims = cosine_similarity(text_emb, video_emb)
    appearance = [f"{r['shape']}/{r['colour']}" for r in rows]
    sizes = {g: appearance.count(g) for g in appearance}
    if len(set(sizes.values())) != 1:
        raise ValueError(
            f"motion-only groups differ in size ({sorted(set(sizes.values()))}); the demo test "
            "split has one clip per (shape, colour, motion)"
        )
    group = next(iter(sizes.values()))
    n = len(rows)
    overall = t2v_ranks(sims, np.arange(n))
    motion = motion_only_ranks(sims, appearance)
    unseen = np.array([str(r.get("held_out", "0")) in ("1", "True", "true") for r in rows])
    results = {
        "overall": summarize(overall) | {"chance": chance_uniform(n)},
        "motion_only": summarize(motion) | {"chance": chance_uniform(group)},
        "appearance": summarize(appearance_ranks(sims, appearance)) | {"chance": chance_first_of(n, group)},
    }
    if unseen.any():
        results["motion_only_unseen"] = summarize(motion[unseen]) | {"chance": chance_uniform(group)}
    results["motion_confusion"] = motion_confusion(sims, rows, appearance)
    return results


def motion_confusion(sims: np.ndarray, rows: list[dict], appearance: list[str]) -> dict[str, dict[str, int]]:
    """{true motion: {motion of the top-ranked candidate of the motion-only query: count}}."""
    groups = np.asarray(appearance)
    confusion: dict[str, dict[str, int]] = {}
    for i, row in enumerate(rows):
        candidates = np.flatnonzero(groups == groups[i])
        top = candidates[np.argmax(sims[i, candidates])]
        picked = confusion.setdefault(row["motion"], {})
        picked[rows[top]["motion"]] = picked.get(rows[top]["motion"], 0) + 1
    return confusion
