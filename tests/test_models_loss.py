"""NormSoftmax as the original computes it, and its gathered form: 2 gloo ranks == 1 process."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from models.loss import (
    NormSoftmaxLoss,
    distributed_norm_softmax_loss,
    distributed_norm_softmax_terms,
    norm_softmax_loss,
    norm_softmax_terms,
    sim_matrix,
)

DIM_IN, DIM = 6, 5


def test_sim_matrix_is_cosine_with_eps():
    a, b = torch.randn(3, 4), torch.randn(5, 4)
    torch.testing.assert_close(sim_matrix(a, b), F.normalize(a, dim=1) @ F.normalize(b, dim=1).T)
    assert torch.equal(sim_matrix(torch.zeros(1, 4), b), torch.zeros(1, 5))  # no NaN for a zero row


def test_norm_softmax_loss_by_hand():
    sim = [[0.9, 0.1], [0.2, 0.8]]
    t = 0.5

    def xent(row, target):
        return -row[target] / t + math.log(sum(math.exp(x / t) for x in row))

    t2v = (xent(sim[0], 0) + xent(sim[1], 1)) / 2
    v2t = (xent([sim[0][0], sim[1][0]], 0) + xent([sim[0][1], sim[1][1]], 1)) / 2
    got = float(NormSoftmaxLoss(temperature=t)(torch.tensor(sim, dtype=torch.float64)))
    assert math.isclose(got, t2v + v2t, rel_tol=1e-12)  # a sum of the two directions, not a mean
    assert NormSoftmaxLoss().temperature == 0.05


def _original_norm_softmax(x, temperature):
    """The original NormSoftmaxLoss.forward, restated line by line (torch.diag takes min(rows, cols) pairs)."""
    i_logsm = F.log_softmax(x / temperature, dim=1)
    j_logsm = F.log_softmax(x.t() / temperature, dim=1)
    idiag, jdiag = torch.diag(i_logsm), torch.diag(j_logsm)
    return -idiag.sum() / len(idiag), -jdiag.sum() / len(jdiag)


def test_non_square_matrices_give_the_originals_terms():
    g = torch.Generator().manual_seed(0)
    for shape in [(5, 5), (3, 7), (7, 3), (1, 4), (4, 1)]:
        sim = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
        t2v, v2t = norm_softmax_terms(sim, 0.05)
        o_t2v, o_v2t = _original_norm_softmax(sim, 0.05)
        torch.testing.assert_close((t2v, v2t), (o_t2v, o_v2t), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(norm_softmax_loss(sim, 0.05), o_t2v + o_v2t, rtol=1e-12, atol=1e-12)
        loss, m_t2v, m_v2t = NormSoftmaxLoss()(sim, return_terms=True)
        torch.testing.assert_close((loss, m_t2v, m_v2t), (o_t2v + o_v2t, o_t2v, o_v2t), rtol=1e-12, atol=1e-12)
    for bad in (torch.zeros(0, 3), torch.zeros(3), torch.zeros(2, 2, 2)):
        with pytest.raises(ValueError, match="2-D"):
            norm_softmax_terms(bad)


def test_local_terms_equal_the_original_terms_in_one_process():
    text, video = torch.randn(7, DIM, dtype=torch.float64), torch.randn(7, DIM, dtype=torch.float64)
    torch.testing.assert_close(
        distributed_norm_softmax_terms(text, video, 0.07), _original_norm_softmax(sim_matrix(text, video), 0.07)
    )


def test_local_form_equals_original_in_one_process():
    text, video = torch.randn(7, DIM), torch.randn(7, DIM)
    torch.testing.assert_close(
        distributed_norm_softmax_loss(text, video, 0.07), norm_softmax_loss(sim_matrix(text, video), 0.07)
    )


# ---- 2 ranks over gloo vs 1 process with the whole batch -------------------------------------------


def _setup(seed=0):
    """Shared 'model' (two linear towers and a learnable log-temperature) and the global batch."""
    g = torch.Generator().manual_seed(seed)
    params = {
        "w_text": torch.randn(DIM, DIM_IN, generator=g),
        "w_video": torch.randn(DIM, DIM_IN, generator=g),
        "logit_scale": torch.full((1,), math.log(1 / 0.05)),
    }
    params = {k: v.requires_grad_() for k, v in params.items()}
    text_in, video_in = torch.randn(8, DIM_IN, generator=g), torch.randn(8, DIM_IN, generator=g)
    return params, text_in, video_in


def _terms(params, text_in, video_in):
    temperature = torch.exp(-params["logit_scale"])
    return distributed_norm_softmax_terms(text_in @ params["w_text"].T, video_in @ params["w_video"].T, temperature)


def _loss(params, text_in, video_in):
    temperature = torch.exp(-params["logit_scale"])
    return distributed_norm_softmax_loss(text_in @ params["w_text"].T, video_in @ params["w_video"].T, temperature)


ROW_SPLITS = [(4, 4), (3, 5)]  # equal and unequal per-rank batches of the same 8 pairs


def _rank_main(rank, world, store, out_path):
    # a file store, not a TCP port: nothing another job on the machine can take first
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        results = []
        for rows in ROW_SPLITS:
            params, text_in, video_in = _setup()
            start = sum(rows[:rank])
            local = slice(start, start + rows[rank])
            loss = _loss(params, text_in[local], video_in[local])
            loss.backward()
            t2v, v2t = _terms(params, text_in[local], video_in[local])
            # what DDP / DeepSpeed do: average gradients (and here the logged loss and its terms) over ranks
            result = {"loss": loss.detach(), "t2v": t2v.detach(), "v2t": v2t.detach()}
            for name, p in params.items():
                dist.all_reduce(p.grad)
                result[name] = p.grad / world
            for key in ("loss", "t2v", "v2t"):
                dist.all_reduce(result[key])
                result[key] /= world
            results.append(result)
        if rank == 0:
            torch.save(results, out_path)  # files, not queues: tensors outlive the child this way
    finally:
        dist.destroy_process_group()
    # Leave without running C++ static destructors: in about 1 run in 10 one of them aborted the child
    # after all its Python work was done ("terminate called without an active exception", no Python
    # frame), failing a test whose results were already written. Only a clean finish gets here.
    os._exit(0)


def test_two_ranks_equal_one_process(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.spawn(_rank_main, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    results = torch.load(out, weights_only=True)
    assert len(results) == len(ROW_SPLITS)

    params, text_in, video_in = _setup()
    full = _loss(params, text_in, video_in)  # no process group: the whole batch in one process
    full.backward()
    full_t2v, full_v2t = _terms(params, text_in, video_in)
    for rows, got in zip(ROW_SPLITS, results):
        torch.testing.assert_close(got["loss"], full.detach(), rtol=1e-6, atol=1e-6, msg=str(rows))
        torch.testing.assert_close(got["t2v"], full_t2v.detach(), rtol=1e-6, atol=1e-6, msg=str(rows))
        torch.testing.assert_close(got["v2t"], full_v2t.detach(), rtol=1e-6, atol=1e-6, msg=str(rows))
        for name, p in params.items():
            assert p.grad.abs().sum() > 0
            torch.testing.assert_close(got[name], p.grad, rtol=1e-5, atol=1e-6, msg=f"{rows} {name}")
