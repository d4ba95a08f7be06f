"""Retrieval metrics against hand-computed values (docs/ORIGINAL.md, 'Metrics': optimistic t2v ties,
averaged v2t ties, min over a video's captions) and against a literal re-statement of the original's
sort-and-search algorithm."""

import numpy as np
import pytest

from pipeline.train.metrics import cosine_similarity, retrieval_metrics, t2v_ranks, v2t_ranks


def test_square_matrix_with_ties_hand_computed():
    sims = np.array(
        [
            [0.9, 0.1, 0.3],  # caption 0 -> video 0: nothing higher            -> t2v rank 0
            [0.5, 0.5, 0.7],  # caption 1 -> video 1: 0.7 higher, 0.5 tie (opt.) -> t2v rank 1
            [0.3, 0.8, 0.3],
        ]
    )  # caption 2 -> video 2: 0.8 higher, 0.3 tie (opt.) -> t2v rank 1
    assert t2v_ranks(sims, np.arange(3)).tolist() == [0, 1, 1]
    # video 2's column is [0.3, 0.7, 0.3]: one higher, caption 2 tied with caption 0 -> positions 1,2 -> 1.5
    assert v2t_ranks(sims, np.arange(3)).tolist() == [0, 1, 1.5]
    m = retrieval_metrics(sims)
    assert m["t2v_R1"] == pytest.approx(100 / 3) and m["t2v_R5"] == 100.0
    assert m["t2v_MedR"] == 2.0 and m["t2v_MeanR"] == pytest.approx(1 + 2 / 3)
    assert m["v2t_R1"] == pytest.approx(100 / 3) and m["v2t_R5"] == 100.0
    assert m["v2t_MedR"] == 2.0 and m["v2t_MeanR"] == pytest.approx(1 + 2.5 / 3)
    assert m["t2v_geometric_mean_R1-R5-R10"] == pytest.approx((100 / 3 * 100 * 100) ** (1 / 3))


def test_several_captions_per_video_hand_computed():
    # captions 0,1 describe video 0; captions 2,3 describe video 1 (video-major, as the original needs)
    sims = np.array([[0.2, 0.6], [0.7, 0.1], [0.4, 0.4], [0.9, 0.4]])
    caption_video = np.array([0, 0, 1, 1])
    # t2v: caption 0 ranks video 0 second; caption 2's tie is optimistic (0); caption 3 ranks video 1 second
    assert t2v_ranks(sims, caption_video).tolist() == [1, 0, 0, 1]
    # v2t video 0: column [.2,.7,.4,.9]: caption 0 -> 3, caption 1 -> 1; min 1
    # v2t video 1: column [.6,.1,.4,.4]: captions 2 and 3 tie behind 0.6 -> (1+2)/2 = 1.5 each; min 1.5
    assert v2t_ranks(sims, caption_video).tolist() == [1, 1.5]
    m = retrieval_metrics(sims, caption_video)
    assert m["t2v_R1"] == 50.0 and m["t2v_MedR"] == 1.5 and m["t2v_MeanR"] == 1.5
    assert m["v2t_R1"] == 0.0 and m["v2t_R5"] == 100.0 and m["v2t_MedR"] == 2.25 and m["v2t_MeanR"] == 2.25
    assert m["v2t_geometric_mean_R1-R5-R10"] == 0.0


def test_all_tied_and_worst_case_cover_r50():
    n = 60
    tied = np.zeros((n, n))
    m = retrieval_metrics(tied)
    assert m["t2v_R1"] == 100.0 and m["t2v_MedR"] == 1.0  # optimistic: every caption first
    assert m["v2t_R10"] == 0.0 and m["v2t_R50"] == 100.0  # averaged: rank (60-1)/2 = 29.5
    assert m["v2t_MedR"] == 30.5 and m["v2t_MeanR"] == 30.5
    worst = -np.eye(n)  # the true pair scores lowest
    m = retrieval_metrics(worst)
    assert m["t2v_R50"] == 0.0 and m["t2v_MedR"] == 60.0 and m["v2t_MeanR"] == 60.0


def _original_t2v(sims, per_video):
    """The original's algorithm: sort distances, first position equal to the GT distance."""
    dists = -sims
    sorted_dists = np.sort(dists, axis=1)
    gt = dists[np.arange(len(dists)), np.arange(len(dists)) // per_video][:, None]
    return np.array([np.where(row == g)[0][0] for row, g in zip(sorted_dists, gt)], dtype=float)


def _original_v2t(sims, per_video):
    dists = -sims.T
    ranks = []
    for ii, row in enumerate(dists):
        sorted_row = np.sort(row)
        ranks.append(
            min(np.where(sorted_row == row[jj])[0].mean() for jj in range(ii * per_video, (ii + 1) * per_video))
        )
    return np.array(ranks)


@pytest.mark.parametrize("per_video", [1, 3])
def test_matches_the_original_algorithm_on_random_tied_matrices(per_video):
    rng = np.random.default_rng(per_video)
    videos = 40
    sims = rng.integers(0, 6, size=(videos * per_video, videos)).astype(np.float64)  # many ties
    caption_video = np.arange(videos * per_video) // per_video
    np.testing.assert_array_equal(t2v_ranks(sims, caption_video), _original_t2v(sims, per_video))
    np.testing.assert_array_equal(v2t_ranks(sims, caption_video), _original_v2t(sims, per_video))


def test_r1_counts_only_rank_zero_under_averaged_ties():
    # video 0's column [0.5, 0.5]: its caption tied with another for first -> v2t rank 0.5: no R@1 hit (the
    # original counts R1 as rank == 0), but a hit for R@5; video 1's caption is first alone -> rank 0
    sims = np.array([[0.5, 0.5], [0.5, 0.9]])
    assert v2t_ranks(sims, np.arange(2)).tolist() == [0.5, 0]
    m = retrieval_metrics(sims)
    assert m["v2t_R1"] == 50.0 and m["v2t_R5"] == 100.0
    assert m["t2v_R1"] == 100.0  # t2v ties are optimistic, so rank 0 for both


def _original_cols2metrics(ranks):
    """The original's `cols2metrics`, restated: R1 is rank == 0, the other recalls rank < K."""
    ranks = np.asarray(ranks, dtype=float)
    out = {
        "R1": 100 * np.mean(ranks == 0),
        "R5": 100 * np.mean(ranks < 5),
        "R10": 100 * np.mean(ranks < 10),
        "R50": 100 * np.mean(ranks < 50),
        "MedR": np.median(ranks) + 1,
        "MeanR": np.mean(ranks) + 1,
    }
    out["geometric_mean_R1-R5-R10"] = float(np.prod([out["R1"], out["R5"], out["R10"]]) ** (1 / 3))
    return out


@pytest.mark.parametrize("per_video", [1, 2, 3])
def test_metrics_match_the_original_on_random_tied_matrices(per_video):
    rng = np.random.default_rng(10 + per_video)
    videos = 30
    for trial in range(5):
        sims = rng.integers(0, 3 + trial, size=(videos * per_video, videos)).astype(np.float64)  # many ties
        caption_video = np.arange(videos * per_video) // per_video
        # lift a third of the true pairs to their column's top score: ties for first place, where R@1 differs
        lifted = rng.random(len(sims)) < 1 / 3
        rows = np.flatnonzero(lifted)
        sims[rows, caption_video[rows]] = sims.max(axis=0)[caption_video[rows]]
        got = retrieval_metrics(sims, caption_video)
        for direction, ranks in (("t2v", _original_t2v(sims, per_video)), ("v2t", _original_v2t(sims, per_video))):
            for name, value in _original_cols2metrics(ranks).items():
                assert got[f"{direction}_{name}"] == pytest.approx(value, abs=1e-9), (trial, direction, name)


def test_cosine_similarity_and_errors():
    s = cosine_similarity(np.array([[3.0, 4.0], [0.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_allclose(s, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
    with pytest.raises(ValueError, match="caption_video"):
        retrieval_metrics(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(np.zeros((2, 3)), np.array([0, 1]))
