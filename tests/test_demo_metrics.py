"""The demo's query sets (pipeline/demo/metrics.py) on hand-built similarity cases."""

import numpy as np
import pytest

from pipeline.demo.metrics import (
    appearance_ranks,
    chance_first_of,
    chance_uniform,
    demo_query_metrics,
    motion_only_ranks,
)


def test_chance_levels():
    assert chance_uniform(8) == {"R1": 12.5, "R5": 62.5, "MedR": 4.5}
    assert chance_uniform(192)["R1"] == pytest.approx(100 / 192)
    # first of 8 good among 192: R@1 = 8/192; P(none of the top 5) = C(187,8)/C(192,8)
    c = chance_first_of(192, 8)
    assert c["R1"] == pytest.approx(100 * 8 / 192)
    from math import comb

    assert c["R5"] == pytest.approx(100 * (1 - comb(187, 8) / comb(192, 8)))
    # Monte Carlo check of the median rank
    rng = np.random.default_rng(0)
    firsts = [np.flatnonzero(rng.permutation(192) < 8)[0] for _ in range(4000)]
    assert abs(np.median(firsts) + 1 - c["MedR"]) <= 1


def test_motion_only_ranks_only_compare_clips_of_the_same_group():
    groups = ["a", "a", "b", "b"]
    sims = np.array(
        [
            [0.5, 0.9, 0.99, 0.99],  # caption 0: its own clip loses to clip 1 (same group): rank 1
            [0.1, 0.2, 0.99, 0.99],  # caption 1: beats clip 0; clips 2, 3 are another group: rank 0
            [0.0, 0.0, 0.3, 0.3],  # a tie counts optimistically: rank 0
            [0.9, 0.9, 0.8, 0.1],
        ]
    )
    assert motion_only_ranks(sims, groups).tolist() == [1, 0, 0, 1]
    # appearance: rank of the best clip of the right group among all clips
    assert appearance_ranks(sims, groups).tolist() == [2, 2, 0, 2]


def _rows():
    return [
        {"shape": s, "colour": c, "motion": m, "held_out": int(m == "up" and s == "square")}
        for s in ("square", "cross")
        for c in ("red", "blue")
        for m in ("left", "right", "up")
    ]


def test_a_motion_blind_model_is_at_chance_and_a_perfect_one_is_perfect():
    rows = _rows()
    n = len(rows)
    # text and video embeddings that encode shape and colour only: every clip of a group looks the same
    app = {key: i for i, key in enumerate(sorted({(r["shape"], r["colour"]) for r in rows}))}
    blind = np.eye(8)[[app[(r["shape"], r["colour"])] for r in rows]]
    res = demo_query_metrics(blind, blind, rows)
    assert res["motion_only"]["R1"] == 100.0  # ties are optimistic, as t2v: all clips tie
    jitter = blind + 1e-3 * np.random.default_rng(0).standard_normal(blind.shape)
    res = demo_query_metrics(blind, jitter, rows)  # ties broken at random
    assert res["appearance"]["R1"] == 100.0
    assert res["motion_only"]["R1"] < 80 and res["motion_only"]["chance"]["R1"] == pytest.approx(100 / 3)
    perfect = np.eye(n)
    res = demo_query_metrics(perfect, perfect, rows)
    assert res["overall"]["R1"] == res["motion_only"]["R1"] == res["motion_only_unseen"]["R1"] == 100.0
    assert res["motion_only_unseen"]["queries"] == 2
    assert res["motion_confusion"]["left"] == {"left": 4}


def test_groups_must_be_complete():
    rows = _rows()[:-1]
    with pytest.raises(ValueError, match="differ in size"):
        demo_query_metrics(np.eye(len(rows)), np.eye(len(rows)), rows)
