"""Training invariants over many positions of one run, on 1 and 2 ranks, ZeRO 0, 2 and 3, with and without
gradient accumulation:

- evaluation (and checkpointing) never changes training: a run with evaluation every K steps and a checkpoint
  after every step ends with bit-identical weights and losses to the same run with neither;
- resume is exact at any step: from the first step, before the first evaluation, at an evaluation step,
  right after one, and later; and after a preemption on an evaluation step (the evaluation then runs first);
- every module is in train mode in every training step and in eval mode in every evaluation.

tests/train_invariants.py runs the sequence in each rank; fp32 on the CPU, the real shard loader with a worker.
"""

import json

import pytest
import torch

from test_train_fixtures import REPO, launch_ranks, make_tiny_assets, read_log, read_weights, tb_scalars, wait_all

pytestmark = pytest.mark.slow
STEPS, EVAL_EVERY = 7, 3  # evaluations after steps 3, 6 and 7 (the last)
RESUME_AT = {1: [1, 2, 3, 4, 5], 2: [1, 3, 4]}  # first step, before / at / right after an evaluation, later
PREEMPT_AT = {1: [3], 2: [3]}  # preempted on an evaluation step: it runs after the resume


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_tiny_assets(tmp_path_factory.mktemp("invariant_assets"))


@pytest.fixture(
    scope="module",
    params=[(1, 0, 1), (1, 2, 2), (2, 2, 1), (2, 3, 1)],
    ids=["1rank-zero0", "1rank-zero2-accum2", "2ranks-zero2", "2ranks-zero3"],
)
def sweep(request, assets, tmp_path_factory):
    world, zero, accum = request.param
    out = tmp_path_factory.mktemp(f"invariants_{world}_{zero}_{accum}")
    args = [
        "--config",
        str(REPO / "configs" / "tiny_1f.json"),
        "--out",
        str(out),
        "--steps",
        str(STEPS),
        "--eval-every",
        str(EVAL_EVERY),
        "--resume-at",
        ",".join(map(str, RESUME_AT[world])),
        "--preempt-at",
        ",".join(map(str, PREEMPT_AT[world])),
    ]
    for override in assets + [f"deepspeed.zero_stage={zero}", f"optim.grad_accum_steps={accum}", "optim.lr=3e-3"]:
        args += ["--set", override]
    procs = launch_ranks(args, world, out / "logs", script="tests/train_invariants.py")
    codes = wait_all(procs, 900)
    assert codes == [0] * world, "\n".join(read_log(out / "logs", r)[-4000:] for r in range(world))
    return {"out": out, "world": world}


def _assert_same_weights(a, b, what):
    wa, wb = read_weights(a / "weights" / "final"), read_weights(b / "weights" / "final")
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{what}: {len(differ)} of {len(wa)} tensors differ, e.g. {differ[:3]}"


def _losses(run):
    tags = tb_scalars(run / "tb")
    return {tag: dict(values) for tag, values in tags.items() if tag.startswith("train/loss")}


def test_evaluation_and_checkpoints_never_change_training(sweep):
    out = sweep["out"]
    assert (out / "full" / "metrics" / f"eval_step_{EVAL_EVERY:08d}.json").is_file()  # it did evaluate
    assert not (out / "noeval" / "metrics" / f"eval_step_{EVAL_EVERY:08d}.json").exists()
    _assert_same_weights(out / "full", out / "noeval", "evaluating every 3 steps vs never")
    assert _losses(out / "full") == _losses(out / "noeval")


@pytest.mark.parametrize("position", ["resume", "preempt"])
def test_resume_is_exact_at_every_step(sweep, position):
    out, full = sweep["out"], _losses(sweep["out"] / "full")
    steps = RESUME_AT[sweep["world"]] if position == "resume" else PREEMPT_AT[sweep["world"]]
    for step in steps:
        run = out / f"{position}_{step}"
        _assert_same_weights(out / "full", run, f"{position} at step {step}")
        resumed = _losses(run)
        for tag, values in full.items():
            later = {s: v for s, v in values.items() if s > step}
            assert {s: v for s, v in resumed[tag].items() if s > step} == later, (step, tag)
        if position == "preempt":  # the evaluation due at the preempted step ran after resuming
            evaluated = json.loads((run / "metrics" / f"eval_step_{step:08d}.json").read_text())
            reference = json.loads((out / "full" / "metrics" / f"eval_step_{step:08d}.json").read_text())
            assert evaluated["metrics"] == reference["metrics"]


def test_every_module_is_in_train_mode_for_training_and_eval_mode_for_evaluation(sweep):
    files = sorted(sweep["out"].glob("*/modes*_rank*.json"))
    assert len(files) >= 2 * sweep["world"]
    for path in files:
        record = json.loads(path.read_text())
        assert record["forwards"]["train"] > 0, path
        assert record["wrong"] == {"train": [], "eval": []}, (path, record["wrong"])
    full = json.loads((sweep["out"] / "full" / "modes_rank0.json").read_text())
    assert full["forwards"]["eval"] > 0  # evaluations were watched too
