"""What slurm/ checks before it submits, without a cluster (docs/SLURM.md): resource fitting against a partition
(pipeline/train/slurm_fit.py), the training stage scripts' commands, log lines and exit codes (with stand-ins for
srun and scontrol), `launch/train.py --check` on the tiny configs and their assets, and the temporal rows a stage
trains (pipeline.train.config.describe_temporal_rows) against the gradient the model really gets."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.train import slurm_fit
from pipeline.train.config import describe_temporal_rows, load_config, trained_temporal_rows

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["make_shards.sh", "pretrain_1f.sh", "pretrain_4f.sh", "finetune_msrvtt.sh", "evaluate.sh"]


# ---- resources against the partition ---------------------------------------------------------------------------

SCONTROL = (
    "PartitionName=cpu AllowGroups=ALL Default=YES MaxNodes=UNLIMITED MaxTime=UNLIMITED "
    "MaxCPUsPerNode=UNLIMITED Nodes=n[1-2] State=UP TotalCPUs=4 TotalNodes=2\n"
    "PartitionName=gpu Default=NO MaxNodes=4 MaxTime=2-00:00:00 MaxCPUsPerNode=UNLIMITED Nodes=g[1-4] "
    "State=UP TotalNodes=4\n"
)


def test_parsers_read_what_slurm_prints():
    parts = slurm_fit.parse_partitions(SCONTROL)
    assert slurm_fit.default_partition(parts) == "cpu"
    gpu = slurm_fit.build_partition(
        parts["gpu"], "g1 64 gpu:a100:8(S:0-1)\ng2 64 gpu:8\ng2 64 gpu:8\ng3 32 gpu:4,shard:2\n"
    )
    assert [(n.name, n.cpus, n.gpus) for n in gpu.nodes] == [("g1", 64, 8), ("g2", 64, 8), ("g3", 32, 4)]
    assert (gpu.max_nodes, gpu.max_time_min) == (4, 2880)
    assert [slurm_fit.parse_time_min(t) for t in ("30", "2:00:00", "1-12", "1-00:30:00", "5:30", "UNLIMITED")] == [
        30,
        120,
        2160,
        1470,
        5.5,
        None,
    ]
    assert slurm_fit.parse_sbatch_options(
        ["-N", "2", "-c8", "--gres=gpu:4", "--time", "10", "-p", "gpu", "--ntasks-per-node=4", "--array=0-3"]
    ) == {
        "nodes": "2",
        "cpus_per_task": "8",
        "gpus_per_node": "4",
        "time": "10",
        "partition": "gpu",
        "ntasks_per_node": "4",
    }


def test_every_script_declares_its_resources():
    for name in SCRIPTS:
        defaults = slurm_fit.script_defaults((REPO / "slurm" / name).read_text())
        assert "cpus_per_task" in defaults and "time" in defaults, (name, defaults)
    assert slurm_fit.script_defaults((REPO / "slurm" / "make_shards.sh").read_text())["cpus_per_task"] == "16"


def _partition(nodes: int, cpus: int, gpus: int, max_nodes=None, max_time=None) -> slurm_fit.Partition:
    return slurm_fit.Partition(
        "p",
        max_nodes=max_nodes,
        max_time_min=max_time,
        nodes=[slurm_fit.Node(f"n{i}", cpus, gpus) for i in range(nodes)],
    )


def _fits(asked: dict, partition: slurm_fit.Partition) -> bool:
    """Whether SLURM could ever start the request: the check of the invariant, written independently."""
    nodes, per_node = int(asked.get("nodes", 1)), int(asked.get("ntasks_per_node", 1))
    cpus, gpus = int(asked.get("cpus_per_task", 1)), int(asked.get("gpus_per_node", 0))
    usable = [n for n in partition.nodes if n.cpus >= per_node * cpus and n.gpus >= gpus]
    time_ok = (
        partition.max_time_min is None
        or "time" not in asked
        or slurm_fit.parse_time_min(asked["time"]) <= partition.max_time_min
    )
    return len(usable) >= nodes and (partition.max_nodes is None or nodes <= partition.max_nodes) and time_ok


@pytest.mark.parametrize("script", ["make_shards.sh", "pretrain_1f.sh", "evaluate.sh"])
def test_fit_request_never_leaves_a_job_that_cannot_start(script):
    """Over many partitions and submissions: either the request, with the defaults it lowered, fits the
    partition, or the error names an option the user gave (defaults alone never stop a submission, except
    GPUs on a partition that has none) and the value to lower it to."""
    defaults = slurm_fit.script_defaults((REPO / "slurm" / script).read_text())
    partitions = [
        _partition(n, c, g, mn, mt)
        for n, c, g, mn, mt in itertools.product((1, 2, 4), (2, 8, 64), (0, 4, 8), (None, 1), (None, 60))
    ]
    givens = [
        {},
        {"cpus_per_task": "16"},
        {"cpus_per_task": "1"},
        {"nodes": "3"},
        {"time": "120"},
        {"gpus_per_node": "0", "ntasks_per_node": "1"},
        {"gpus_per_node": "4", "ntasks_per_node": "4"},
        {"gpus_per_node": "0", "ntasks_per_node": "1", "cpus_per_task": "4", "nodes": "2"},
    ]
    checked = errors = 0
    for partition, given in itertools.product(partitions, givens):
        try:
            fit = slurm_fit.fit_request(defaults, given, partition, script)
        except slurm_fit.ResourceError as err:
            errors += 1
            message = str(err)
            named = [key for key in given if slurm_fit._HOW.get(key, ("?",))[0] in message]
            no_gpus = "has no GPUs" in message and max(n.gpus for n in partition.nodes) == 0
            assert named or no_gpus or "tasks per node" in message, (given, message)
            assert "lower" in message or no_gpus, message
            continue
        checked += 1
        final = {**defaults, **given, **slurm_fit.parse_sbatch_options(fit.options)}
        assert _fits(final, partition), (given, partition, fit)
        assert not set(slurm_fit.parse_sbatch_options(fit.options)) & set(given), "a given option was changed"
        assert fit.ranks == int(final.get("nodes", 1)) * fit.tasks_per_node
    assert checked > 50 and errors > 50, (checked, errors)


def test_defaults_are_lowered_and_given_values_are_refused_on_a_small_node():
    small = _partition(2, 2, 0)
    fit = slurm_fit.fit_request({"cpus_per_task": "16", "ntasks": "1"}, {}, small, "make_shards.sh")
    assert fit.options == ["--cpus-per-task=2"] and "does not fit" in fit.notes[0]
    with pytest.raises(
        slurm_fit.ResourceError,
        match=r"--cpus-per-task=16 .* lower --cpus-per-task to 2 "
        r"\(slurm/curriculum.sh: CPUS_PER_TASK=2\)",
    ):
        slurm_fit.fit_request({"cpus_per_task": "16"}, {"cpus_per_task": "16"}, small, "make_shards.sh")
    with pytest.raises(slurm_fit.ResourceError, match="has no GPUs.*GPUS_PER_NODE=0"):
        slurm_fit.fit_request({"gpus_per_node": "8", "ntasks_per_node": "8"}, {}, small, "pretrain_1f.sh")
    fit = slurm_fit.fit_request(
        {"nodes": "2", "gpus_per_node": "8", "ntasks_per_node": "8", "cpus_per_task": "8"},
        {},
        _partition(2, 64, 4),
        "pretrain_1f.sh",
    )  # one task per GPU, 2 x 4 ranks
    assert sorted(fit.options) == ["--gpus-per-node=4", "--ntasks-per-node=4"] and fit.ranks == 8


# ---- the training stage scripts without a cluster: srun, scontrol and the interpreter are stand-ins ----------------

STAGES = {  # script: (stage name in its log lines, what its initial weights are, the note after them)
    "pretrain_1f.sh": ("1-frame pretraining", None, None),
    "pretrain_4f.sh": (
        "4-frame pretraining",
        "the 1-frame stage's weights/final folder",
        " (its temporal rows: the 'train: temporal embedding' line below)",
    ),
    "finetune_msrvtt.sh": (
        "MSR-VTT fine-tuning",
        "the pretrained weights (e.g. the 4-frame stage's weights/final)",
        "",
    ),
}
STAND_INS = {  # each prints how it was called; the "ranks" exit with $RANKS_EXIT
    "srun": 'echo "srun $*"; exit "${RANKS_EXIT:-0}"',
    "scontrol": 'case "$1" in show) echo "JobId=$SLURM_JOB_ID StdOut=/logs/job.out" ;; *) echo "scontrol $*" ;; esac',
    "python-stand-in": 'echo "python $*"',
}


def _run_stage(tmp_path: Path, script: str, **env: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (tmp_path / "init").mkdir(exist_ok=True)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FIT_ROOT": str(REPO),
        "PYTHON": "python-stand-in",
        "SLURM_JOB_ID": "42",
        "CONFIG": "configs/tiny_1f.json",
        "OUTPUT_DIR": "out",
        "INIT_FROM": "init",
        **env,
    }
    return subprocess.run(
        ["bash", str(REPO / "slurm" / script), "--set", "optim.lr=1e-4"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("script", sorted(STAGES))
def test_stage_scripts_launch_check_and_requeue_with_their_own_names(tmp_path, script):
    """Each stage script runs the shared stage body (slurm/common.sh fit_train_stage) with its own stage name,
    initial weights and log lines: in check mode, a finished run, a preempted one (exit 75: requeue, exit 0),
    a failed one (its exit code), and missing initial weights (exit 2 before anything starts)."""
    stage, init_what, init_note = STAGES[script]
    config, out, init = REPO / "configs" / "tiny_1f.json", tmp_path / "out", tmp_path / "init"
    load = f" --set checkpoint.load_checkpoint={init}" if init_what else ""

    check = _run_stage(tmp_path, script, FIT_CHECK="1", FIT_CHECK_RANKS="4")
    assert check.returncode == 0, check.stderr
    assert check.stdout == (
        f"python {REPO}/launch/train.py --check --ranks 4 --config {config} "
        f"--set output_dir={out}{load} --set optim.lr=1e-4\n"
    )
    assert (f"initial weights: {init}{init_note}\n" in check.stderr) == bool(init_what), check.stderr

    done = _run_stage(tmp_path, script)
    assert done.returncode == 0, done.stderr
    assert (
        f"srun --wait=120 --label python-stand-in -u {REPO}/launch/train.py --config {config} "
        f"--set output_dir={out} --resume auto{load} --set optim.lr=1e-4\n"
    ) in done.stdout
    assert f"{stage}: job 42 " in done.stderr and "  job log:      /logs/job.out\n" in done.stderr
    assert done.stderr.endswith(f"] {stage} finished: weights in {out}/weights/final, metrics in {out}/metrics\n")

    preempted = _run_stage(tmp_path, script, RANKS_EXIT="75")
    assert preempted.returncode == 0 and preempted.stdout.endswith("scontrol requeue 42\n"), preempted
    assert f"] {stage} preempted: checkpoint saved; requeueing job 42 " in preempted.stderr

    failed = _run_stage(tmp_path, script, RANKS_EXIT="3")
    assert failed.returncode == 3 and "scontrol requeue" not in failed.stdout, failed
    assert failed.stderr.endswith(f"] {stage} failed with exit code 3; see the ranks' lines above\n")

    missing = _run_stage(tmp_path, script, INIT_FROM="nowhere")
    if init_what:
        assert missing.returncode == 2 and missing.stdout == "", missing
        assert missing.stderr.endswith(
            f"error: initial weights nowhere do not exist ({init_what}; did that stage finish?)\n"
        ), missing.stderr
    else:
        assert missing.returncode == 0, missing.stderr


# ---- launch/train.py --check: the tiny configs after `make tiny-assets`, with no overrides ---------------------


def _check(cwd: Path, config: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "launch" / "train.py"), "--config", str(REPO / config), "--check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def test_tiny_configs_check_after_tiny_assets_and_name_the_step_before(tmp_path, monkeypatch):
    """The tiny configs read runs/tiny_assets/ relative to the working directory: before `make tiny-assets`
    the check names every missing input and the command; after it every tiny config passes, unchanged."""
    from pipeline.demo.tiny_assets import DEFAULT_ROOT, write_tiny_assets
    from pipeline.train.config import check_inputs

    monkeypatch.chdir(tmp_path)
    tiny_configs = sorted((REPO / "configs").glob("tiny_*.json"))
    assert {p.name for p in tiny_configs} >= {"tiny_1f.json", "tiny_4f.json", "tiny_finetune.json"}
    missing = "\n".join(check_inputs(load_config(REPO / "configs" / "tiny_1f.json"), world_size=2))
    for key in ("data.train[0].shards", "data.train[1].shards", "data.eval[0].shards", "model.text.model"):
        assert key in missing, missing
    assert "make tiny-assets" in missing

    write_tiny_assets(DEFAULT_ROOT)
    from shard_tools.verify import verify

    for name in ("images", "videos", "val"):  # shards as make-shards writes them: verify finds no problem
        report = verify(tmp_path / DEFAULT_ROOT / name)
        assert report.ok and report.members_checked > 0, (name, report.problems[:3])
    for config in tiny_configs:
        assert check_inputs(load_config(config), world_size=2) == [], config.name
    crowded = check_inputs(load_config(REPO / "configs" / "tiny_1f.json"), world_size=5)  # 4 shards per set
    assert any(p.startswith("data.train[0].shards: 4 shards for 5 ranks") for p in crowded), crowded

    ok = _check(tmp_path, "configs/tiny_finetune.json", "--ranks", "2")
    assert ok.returncode == 0 and "config OK for 2 rank(s)" in ok.stderr, ok.stderr
    bad = _check(tmp_path, "configs/tiny_4f.json", "--set", "optim.lr=-1")
    assert bad.returncode == 2 and "optim.lr: must be > 0" in bad.stderr, bad.stderr


# ---- which temporal rows train, and when inflation applies ------------------------------------------------------


@pytest.mark.parametrize("rows,frames", [(4, (1, 1)), (4, (1, 4)), (4, (1, 2)), (1, (1, 1)), (8, (1, 4))])
def test_described_temporal_rows_are_the_rows_that_get_a_gradient(rows, frames):
    import torch

    from models.video_transformer import SpaceTimeTransformer

    cfg = load_config(
        REPO / "configs" / "tiny_1f.json",
        [
            f"model.video.num_frames={rows}",
            f"data.train[0].num_frames={frames[0]}",
            f"data.train[1].num_frames={frames[1]}",
            "data.train[0].kind=video",
        ],
    )
    model = SpaceTimeTransformer.from_config(cfg.model.video)
    with torch.no_grad():
        model.temporal_embed.normal_()
    for spec in cfg.data.train:  # one step's loss over every training set, at its frame count
        video = torch.randn(2, spec.num_frames, 3, cfg.model.video.img_size, cfg.model.video.img_size)
        model.forward_features(video).square().sum().backward()
    grad_rows = (model.temporal_embed.grad[0].abs().sum(dim=1) > 0).nonzero().flatten().tolist()
    assert grad_rows == list(range(trained_temporal_rows(cfg)))
    text = describe_temporal_rows(cfg)
    if len(grad_rows) == rows:
        assert f"all {rows} row(s) train" in text
    else:
        assert "get no gradient" in text and (
            f"rows {len(grad_rows)}-{rows - 1}" in text or f"row {len(grad_rows)}" in text
        ), text


@pytest.mark.parametrize("have,expect", [(4, "no inflation"), (1, "inflated to 4"), (None, "only if it has fewer")])
def test_description_says_when_inflation_applies(tmp_path, have, expect):
    weights = tmp_path / "weights"
    weights.mkdir()
    if have is not None:
        (weights / "model_config.json").write_text(json.dumps({"video": {"num_frames": have}}))
    cfg = load_config(REPO / "configs" / "tiny_4f.json", [f"checkpoint.load_checkpoint={weights}"])
    assert expect in describe_temporal_rows(cfg)
    assert "fresh model" in describe_temporal_rows(load_config(REPO / "configs" / "tiny_1f.json"))
    assert "row 0 trains, rows 1-3 get no gradient" in describe_temporal_rows(
        load_config(REPO / "configs" / "pretrain_1f.json")
    )
