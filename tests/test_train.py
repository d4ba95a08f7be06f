"""The trainer end to end: real DeepSpeed ZeRO over gloo, tiny model, several ranks as srun would start them.

Runs are started concurrently and shared between tests to keep start-up costs down (~1 min of each launch
is imports and DeepSpeed initialisation on a loaded 2-core machine).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_train_fixtures import REPO, launch_ranks, make_tiny_assets, read_log, read_weights, tb_scalars, wait_all

pytestmark = pytest.mark.slow
CONFIG = str(REPO / "configs" / "tiny_1f.json")
STEPS = 24
COMMON = [
    f"optim.total_steps={STEPS}",
    "eval.every_steps=12",
    "checkpoint.every_steps=12",
    "log.every_steps=1",
    "optim.lr=3e-4",
]


def _args(overrides, out):
    return ["--config", CONFIG, *[a for o in overrides + [f"output_dir={out}"] for a in ("--set", o)]]


def _wait_for_step(log_dir, step, procs, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if f"step {step}/" in read_log(log_dir):
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a rank exited before step {step}:\n{read_log(log_dir)[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no step {step} after {timeout} s:\n{read_log(log_dir)[-3000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A: 2 ranks, uninterrupted. Run B: the same, SIGUSR1 to rank 1 mid-run, then --resume auto."""
    root = tmp_path_factory.mktemp("train")
    overrides = make_tiny_assets(root / "assets") + COMMON
    a, b = root / "a", root / "b"
    procs_a = launch_ranks(_args(overrides, a), 2, a / "logs")
    procs_b = launch_ranks(_args(overrides, b), 2, b / "logs")
    try:
        _wait_for_step(b / "logs", 3, procs_b)
        procs_b[1].send_signal(signal.SIGUSR1)  # one rank is told; both must stop at the same step
    finally:
        codes_b = wait_all(procs_b, 240)  # kills whatever still runs when it gives up
        codes_a = wait_all(procs_a, 240)
    assert codes_a == [0, 0], read_log(a / "logs")[-3000:]
    assert codes_b == [75, 75], read_log(b / "logs")[-3000:] + read_log(b / "logs", 1)[-3000:]
    stopped = json.loads(max((b / "checkpoints").glob("step_*/COMPLETE")).read_text())["step"]
    procs = launch_ranks(_args(overrides, b) + ["--resume", "auto"], 2, b / "logs_resumed")
    assert wait_all(procs, 300) == [0, 0], read_log(b / "logs_resumed")[-3000:]
    return {"a": a, "b": b, "stopped": stopped, "overrides": overrides, "root": root}


def test_preempted_and_resumed_run_equals_uninterrupted(runs):
    a, b = runs["a"], runs["b"]
    assert 3 <= runs["stopped"] < STEPS, runs["stopped"]
    assert f"resumed from {b / 'checkpoints' / ('step_%08d' % runs['stopped'])}" in read_log(b / "logs_resumed")
    curve_a, curve_b = tb_scalars(a / "tb"), tb_scalars(b / "tb")
    for tag in ("train/loss/images", "train/loss/videos", "train/lr"):
        assert [s for s, _ in curve_a[tag]] == list(range(1, STEPS + 1))
        assert curve_b[tag] == curve_a[tag], tag  # exact, step by step
    wa, wb = read_weights(a / "weights" / "final"), read_weights(b / "weights" / "final")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # keep_last=2 of checkpoints every 12 steps (+ the preemption one, pruned away): only the newest two
    kept = sorted(p.name for p in (b / "checkpoints").glob("step_*"))
    assert kept[-1] == f"step_{STEPS:08d}" and len(kept) == 2


def test_tensorboard_holds_the_promised_tags(runs):
    tags = tb_scalars(runs["a"] / "tb")
    promised = [
        "train/loss/images",
        "train/loss/videos",
        "train/loss_total",
        "train/loss_t2v/images",
        "train/loss_v2t/images",
        "train/loss_t2v/videos",
        "train/loss_v2t/videos",
        "train/lr",
        "perf/samples_per_s",
        "perf/samples_per_s_per_device",
        "perf/data_wait_fraction",
        "perf/step_time_s",
        "perf/memory_gb",
        "eval/val/t2v_R1",
        "eval/val/t2v_R5",
        "eval/val/t2v_R10",
        "eval/val/t2v_R50",
        "eval/val/t2v_MedR",
        "eval/val/t2v_MeanR",
        "eval/val/v2t_R1",
        "eval/val/v2t_MedR",
        "eval/val/val_loss",
    ]
    missing = [t for t in promised if t not in tags]
    assert not missing, f"missing tags {missing}; have {sorted(tags)}"
    assert [s for s, _ in tags["eval/val/t2v_R1"]] == [12, 24]
    assert all(0 <= v <= 1 for _, v in tags["perf/data_wait_fraction"])
    for name in ("images", "videos"):  # the logged loss is the sum of its two logged terms, step by step
        for (s, total), (_, t2v), (_, v2t) in zip(
            tags[f"train/loss/{name}"], tags[f"train/loss_t2v/{name}"], tags[f"train/loss_v2t/{name}"]
        ):
            assert total == pytest.approx(t2v + v2t, rel=1e-5), (name, s)
    # two ranks, 4 + 4 samples per rank per step: the global rate is twice the per-device rate
    for (_, total), (_, per) in zip(tags["perf/samples_per_s"], tags["perf/samples_per_s_per_device"]):
        assert total == pytest.approx(2 * per, rel=1e-5)
    for name in (
        "config.json",
        "metrics/eval_step_00000012.json",
        "metrics/final.json",
        "weights/final/weights.safetensors",
        "weights/final/model_config.json",
        "weights/best/weights.safetensors",
        "weights/best/model_config.json",
    ):
        assert (runs["a"] / name).is_file(), name


def _evaluate(run, out, *extra):
    """launch/evaluate.py on a run's exported final weights, as one process without DeepSpeed ranks."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [
            sys.executable,
            "launch/evaluate.py",
            "--checkpoint",
            str(run / "weights" / "final"),
            "--config",
            str(run / "config.json"),
            "--out",
            str(out),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_exported_weights_give_the_live_models_metrics_in_evaluate(runs):
    a = runs["a"]
    live = json.loads((a / "metrics" / "final.json").read_text())["eval"]["val"]
    assert live["num_videos"] == 12 and live["num_captions"] == 24  # two captions per video scored
    out = a / "eval_final.json"
    proc = _evaluate(a, out)
    offline = json.loads(out.read_text())["metrics"]["val"]
    assert json.loads(proc.stdout)["metrics"]["val"] == offline
    for key, value in live.items():
        assert offline[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # test-time sliding window: all 8 stored frames loaded, windows of 4 at offsets 0 and 1 averaged
    sliding = a / "eval_sliding.json"
    _evaluate(
        a,
        sliding,
        "--set",
        "data.eval[0].num_frames=8",
        "--set",
        "eval.window_frames=4",
        "--set",
        "eval.sliding_window_stride=1",
    )
    windowed = json.loads(sliding.read_text())["metrics"]["val"]
    assert windowed["num_videos"] == 12 and windowed["val_loss"] != offline["val_loss"]


def test_two_ranks_zero2_match_one_rank_with_the_whole_batch(tmp_path):
    """fp32, ZeRO-2, clipping on (explicit), two datasets (1 and 4 frames) per step, AdamW with weight decay."""
    base = [
        f"data.train[0].shards={tmp_path}",
        f"data.train[1].shards={tmp_path}",
        "data.eval=[]",
        "eval.best_metric=null",
        "optim.total_steps=6",
        "log.every_steps=1",
        "optim.grad_clip=0.5",
        "checkpoint.every_steps=0",
        "optim.lr=1e-3",
        # Adam divides by sqrt(v) + eps: with the default 1e-6, parameters whose true gradient is (nearly)
        # zero -- the attention key bias, the zero-initialised time attention -- turn fp32 summation-order
        # noise into lr-sized steps (deepspeed_on_cpu.md section 3); a larger eps keeps that noise small
        "optim.eps=1e-4",
        "model.text.model=" + str(tmp_path / "text"),
    ]
    from models.tiny import write_tiny_text_model

    text = write_tiny_text_model(tmp_path / "text", arch="distilbert", hidden=32, layers=1, heads=2)
    hf = json.loads((text / "config.json").read_text())  # dropout draws differ between batch splits: off
    (text / "config.json").write_text(json.dumps({**hf, "dropout": 0.0, "attention_dropout": 0.0}))
    script, CONFIG_4F = "tests/test_train_fixtures.py", str(REPO / "configs" / "tiny_4f.json")
    two = launch_ranks(
        ["synthetic", "--config", CONFIG_4F]
        + sum((["--set", o] for o in base + [f"output_dir={tmp_path / 'two'}"]), []),
        2,
        tmp_path / "two_logs",
        script=script,
    )
    one = launch_ranks(
        ["synthetic", "--config", CONFIG_4F]
        + sum(
            (
                ["--set", o]
                for o in base
                + [f"output_dir={tmp_path / 'one'}", "data.train[0].batch_size=8", "data.train[1].batch_size=8"]
            ),
            [],
        ),
        1,
        tmp_path / "one_logs",
        script=script,
    )
    assert wait_all(two + one, 300) == [0, 0, 0], read_log(tmp_path / "two_logs") + read_log(tmp_path / "one_logs")
    w1, w2 = read_weights(tmp_path / "one" / "weights" / "final"), read_weights(tmp_path / "two" / "weights" / "final")
    worst = {name: (a - w2[name]).abs().max().item() for name, a in w1.items()}
    assert max(worst.values()) < 1e-6, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
    c1, c2 = tb_scalars(tmp_path / "one" / "tb"), tb_scalars(tmp_path / "two" / "tb")
    for tag in ("train/loss/images", "train/loss/videos"):
        for (s1, v1), (s2, v2) in zip(c1[tag], c2[tag]):
            assert s1 == s2 and v1 == pytest.approx(v2, abs=1e-5), (tag, s1, v1, v2)
    assert (tmp_path / "one" / "tb").exists() and len(c1["train/loss/images"]) == 6


def test_resume_on_another_rank_count_says_how_and_works_after_conversion(runs):
    b = runs["b"]
    procs = launch_ranks(_args(runs["overrides"], b) + ["--resume", "auto"], 1, b / "logs_one_rank")
    assert wait_all(procs, 240) == [1]
    text = read_log(b / "logs_one_rank")
    assert "saved by 2 ranks but this run has 1" in text and "ds_to_universal" in text
    source = b / "checkpoints" / f"step_{STEPS:08d}"
    universal = source.with_name(source.name + "_universal")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "deepspeed.checkpoint.ds_to_universal",
            "--input_folder",
            str(source),
            "--output_folder",
            str(universal),
            "--inject_missing_state",
        ],
        check=True,
        capture_output=True,
        timeout=240,
    )
    more = runs["overrides"] + [f"optim.total_steps={STEPS + 2}", "eval.every_steps=0"]
    procs = launch_ranks(_args(more, b) + ["--resume", str(universal)], 1, b / "logs_universal")
    assert wait_all(procs, 240) == [0], read_log(b / "logs_universal")[-3000:]
    assert "resumed the universal checkpoint" in read_log(b / "logs_universal")
    lr = dict(tb_scalars(b / "tb")["train/lr"])
    assert sorted(lr)[-2:] == [STEPS + 1, STEPS + 2]  # continued from step 24 on one rank


def test_a_dead_rank_makes_the_others_exit_with_an_error(runs, tmp_path):
    out = tmp_path / "dead"
    procs = launch_ranks(
        _args(runs["overrides"] + ["optim.total_steps=100000", "deepspeed.comm_timeout_s=60"], out), 2, out / "logs"
    )
    try:
        _wait_for_step(out / "logs", 2, procs)
        procs[1].kill()  # SIGKILL: no clean-up, like a node failure
        killed_at = time.time()
        procs[0].wait(timeout=120)  # bounded: gloo sees the closed peer (or the 60 s timeout)
    finally:
        codes = wait_all(procs, 1)
    assert codes[0] not in (0, 75) and time.time() - killed_at < 120, read_log(out / "logs")[-2000:]
