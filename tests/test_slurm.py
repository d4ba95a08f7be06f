"""slurm/ on a real SLURM cluster: 2 emulated nodes started by tests/slurm_cluster.sh (docs/SLURM.md).

1. `sbatch slurm/make_shards.sh` as a 2-task array writes the same shards as one make-shards process;
2. `slurm/curriculum.sh` runs 1-frame -> 4-frame across 2 nodes x 1 CPU task; the 4-frame stage starts from
   the 1-frame weights with the temporal embedding inflated from 1 to 4 frames;
3. a 1-frame job signalled mid-run (the path `--signal=USR1@...` takes) checkpoints, requeues itself and
   resumes, ending with the same step count, losses and weights as the uninterrupted stage of test 2;
4. a failing 1-frame stage gets the 4-frame stage cancelled, on a cluster without kill_invalid_depend;
5. at submission (slurm/submit.sh, curriculum.sh): a script default that does not fit the 2-CPU nodes is
   lowered, a given value that does not fit is refused with the option to lower, a bad config value of any
   stage stops the curriculum with the stage's name -- and nothing is submitted;
6. docs/SLURM.md's first command on a new cluster: `make tiny-assets`, then the tiny curriculum with
   --finetune --evaluate and no overrides: every job completes, none pends on its partition's limits, the job
   logs hold no FutureWarning and say which temporal rows each stage trains.

The training jobs of 2-4 are submitted together (one module fixture) so that they share the cluster's time.
Jobs are watched with squeue / `scontrol show job` (never `sbatch --wait`) and cancelled at the end.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def _cluster_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


if os.environ.get("FIT_SLURM_CLUSTER") != "up" and not _cluster_answers():
    pytest.skip(
        "no SLURM cluster: start one with `SLURM_CI_NODES=2 bash tests/slurm_cluster.sh up` "
        "(CI does, and sets FIT_SLURM_CLUSTER=up)",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TIMEOUT_S = 300
# The sbatch resources of a training job on the test cluster: 2 nodes x 1 CPU task, no GPUs. --time must be
# longer than the scripts' --signal lead (600 s) or SIGUSR1 arrives at once.
CPU_JOB = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=30"]
CURRICULUM_ENV = {"NODES": "2", "GPUS_PER_NODE": "0", "CPUS_PER_TASK": "1", "TIME": "30"}
STEPS_1F = 12


# ---- talking to SLURM ---------------------------------------------------------------------------------------


def job_env(**extra) -> dict:
    """The environment sbatch exports to the jobs (--export=ALL): CPU DeepSpeed, one thread per rank."""
    return dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", **extra)


def sbatch(args: list[str], cwd: Path, **env) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", *args], cwd=cwd, env=job_env(**env), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, f"sbatch {args} failed: {out.stderr}"
    return out.stdout.strip().split(";")[0]


def submit(args: list[str], cwd: Path, **env) -> str:
    """`bash slurm/submit.sh ARGS` (checks, then sbatch); the job id."""
    out = subprocess.run(
        ["bash", str(REPO / "slurm" / "submit.sh"), *args],
        cwd=cwd,
        env=job_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, f"submit.sh {args} failed: {out.stderr}"
    return out.stdout.strip().splitlines()[-1]


def jobs_named(name: str) -> str:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T %r"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def job_info(job: str) -> dict[str, str]:
    """`scontrol show job` fields of a job (an array job gives its first task's)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"scontrol show job {job}: {out.stderr}"
    line = out.stdout.splitlines()[0]
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))


def array_states(job: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    return re.findall(r"JobState=(\S+)", out.stdout)


def queued(jobs: list[str]) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(jobs)], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip() if out.returncode == 0 else ""


def wait_jobs(jobs: list[str], deadline: float, logs: list[Path] = ()) -> None:
    """Poll squeue until none of `jobs` is pending or running (a requeued job counts as queued)."""
    while True:
        left = queued(jobs)
        if not left:
            return
        if time.time() > deadline:
            tails = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
            pytest.fail(f"jobs still queued after the deadline:\n{left}\n{tails}")
        time.sleep(1.0)


def cancel(jobs: list[str]) -> None:
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)


def wait_for_line(log: Path, pattern: str, job: str, deadline: float) -> str:
    """The first line of `log` matching `pattern`, while `job` runs."""
    regex = re.compile(pattern)
    while time.time() < deadline:
        if log.exists():
            for line in log.read_text(errors="replace").splitlines():
                if regex.search(line):
                    return line
        if not queued([job]):
            pytest.fail(f"job {job} ended before its log showed {pattern!r}:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    pytest.fail(f"no line {pattern!r} in {log} before the deadline")


# ---- reading results ----------------------------------------------------------------------------------------


def train_losses(output_dir: Path) -> dict[int, float]:
    """train/loss_total per step from every TensorBoard file of a run (a resumed run has several)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    losses = {}
    for events in sorted((output_dir / "tb").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "train/loss_total" in acc.Tags()["scalars"]:
            losses.update({e.step: e.value for e in acc.Scalars("train/loss_total")})
    return losses


def final_weights(output_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(output_dir / "weights" / "final" / "weights.safetensors"))


# ---- 1. make-shards as a job array ---------------------------------------------------------------------------


def test_make_shards_array_equals_single_process(tmp_path):
    import media

    rows = []
    for i in range(7):
        clip = media.render_clip(
            tmp_path / "clips" / f"c{i}.mp4",
            seconds=1.0,
            size=(64, 48),
            fps=10,
            pattern="testsrc2" if i % 2 else "smptebars",
        )
        rows.append({"file": str(clip.relative_to(tmp_path)), "caption": f"clip number {i}"})
    rows.insert(3, {"file": "clips/missing.mp4", "caption": "a row whose file does not exist"})
    with open(tmp_path / "clips.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    options = [
        "--table",
        "clips.csv",
        "--path-col",
        "file",
        "--caption-col",
        "caption",
        "--frames",
        "4",
        "--short-side",
        "32",
        "--samples-per-shard",
        "2",
        "--no-progress",
    ]
    (tmp_path / "logs").mkdir()

    # through slurm/submit.sh with the script's default of 16 CPUs per task: lowered to the nodes' 2
    job = submit(
        ["--array=0-1", "--time=10", str(REPO / "slurm" / "make_shards.sh"), "csv", *options, "--out", "array"],
        cwd=tmp_path,
    )
    try:
        single = subprocess.run(
            [sys.executable, "-m", "shard_tools.cli", "csv", *options, "--out", "single", "--workers", "1"],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert single.returncode == 0, single.stderr
        wait_jobs([job], time.time() + 120, logs=list((tmp_path / "logs").glob("*")))
    finally:
        cancel([job])
    assert array_states(job) == ["COMPLETED", "COMPLETED"], array_states(job)
    assert job_info(job)["NumCPUs"] == "2", job_info(job)
    task_logs = sorted((tmp_path / "logs").glob(f"fit-shards-{job}_*.out"))
    assert [p.name for p in task_logs] == [f"fit-shards-{job}_0.out", f"fit-shards-{job}_1.out"]
    assert "task 0/2" in task_logs[0].read_text() and "task 1/2" in task_logs[1].read_text()

    single_files = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert single_files == sorted(p.name for p in (tmp_path / "array").iterdir())
    assert sum(name.endswith(".tar") for name in single_files) == 4
    for name in single_files:
        assert (tmp_path / "array" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    manifest = json.loads((tmp_path / "array" / "manifest.json").read_text())
    assert (manifest["input_rows"], manifest["total_samples"], manifest["failed"]) == (8, 7, {"missing_file": 1})


# ---- 2-4. the training jobs, submitted together ----------------------------------------------------------------


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    """Submit the curriculum (test 2), a stand-alone 1-frame job to preempt (test 3) and a curriculum whose
    1-frame stage fails (test 4); cancel whatever is left at the end."""
    from test_train_fixtures import make_tiny_assets

    work = tmp_path_factory.mktemp("slurm_training")
    assets = [f"--set {o}" for o in make_tiny_assets(work / "assets")]
    # 1-frame stage: a model with ONE temporal position (so the 4-frame stage must inflate it), evaluated at 1
    # frame; 4-frame stage: a learning rate so small that its final weights are the inflated start, to 1e-6.
    args_1f = assets + [
        "--set model.video.num_frames=1",
        "--set data.eval[0].num_frames=1",
        f"--set optim.total_steps={STEPS_1F}",
    ]
    args_4f = assets + ["--set optim.lr=1e-9"]
    # test 4: the 1-frame stage's text model folder exists (so the check at submission passes) but is empty,
    # so the job fails when it loads it (the last --set wins)
    (work / "empty_text_model").mkdir()
    args_1f_broken = args_1f + [f"--set model.text.model={work / 'empty_text_model'}"]
    (work / "logs").mkdir()
    jobs = {}

    def curriculum(run_dir: str, stage_1f_args: list[str]) -> dict[str, str]:
        out = subprocess.run(
            ["bash", str(REPO / "slurm" / "curriculum.sh")],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
            env=job_env(
                RUN_DIR=run_dir,
                CONFIG_1F=str(REPO / "configs" / "tiny_1f.json"),
                CONFIG_4F=str(REPO / "configs" / "tiny_4f.json"),
                ARGS_1F=" ".join(stage_1f_args),
                ARGS_4F=" ".join(args_4f),
                **CURRICULUM_ENV,
            ),
        )
        assert out.returncode == 0, out.stderr
        ids = dict(line.split() for line in out.stdout.splitlines())
        assert list(ids) == ["pretrain_1f", "pretrain_4f"], out.stdout
        return ids

    try:
        jobs["curriculum"] = curriculum("curriculum", args_1f)
        jobs["preempted"] = sbatch(
            [*CPU_JOB, str(REPO / "slurm" / "pretrain_1f.sh"), *" ".join(args_1f).split()],
            cwd=work,
            CONFIG=str(REPO / "configs" / "tiny_1f.json"),
            OUTPUT_DIR="preempted",
        )
        jobs["failing"] = curriculum("failing", args_1f_broken)
        yield {"work": work, "jobs": jobs, "deadline": time.time() + TIMEOUT_S}
    finally:
        cancel([j for group in jobs.values() for j in ([group] if isinstance(group, str) else group.values())])


def job_log(work: Path, name: str, job: str) -> Path:
    return work / "logs" / f"{name}-{job}.out"


def test_preempted_stage_requeues_and_resumes(training):
    """Runs first among the training tests so that the job is still running when it is signalled."""
    work, job = training["work"], training["jobs"]["preempted"]
    log = job_log(work, "fit-1f", job)
    wait_for_line(log, r"step 1/\d+ ", job, training["deadline"])
    # the delivery path of `#SBATCH --signal=USR1@600`: SIGUSR1 to every task of the job's steps
    subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)

    reference = work / "curriculum" / "1f"
    wait_jobs([job, training["jobs"]["curriculum"]["pretrain_1f"]], training["deadline"], logs=[log])
    info = job_info(job)
    text = log.read_text()
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), (info, text[-4000:])
    saved = re.search(r"preempted at step (\d+): checkpoint saved", text)
    assert saved and 0 < int(saved.group(1)) < STEPS_1F, text[-4000:]
    assert "requeueing job" in text and "restart 1" in text
    assert re.search(rf"resumed from \S+step_0*{saved.group(1)} at step {saved.group(1)}", text), text[-4000:]

    preempted = work / "preempted"
    assert json.loads((preempted / "metrics" / "final.json").read_text())["step"] == STEPS_1F
    resumed_losses, reference_losses = train_losses(preempted), train_losses(reference)
    assert sorted(resumed_losses) == list(range(1, STEPS_1F + 1))
    assert resumed_losses == pytest.approx(reference_losses, rel=1e-5, abs=1e-6)
    resumed_weights, reference_weights = final_weights(preempted), final_weights(reference)
    assert resumed_weights.keys() == reference_weights.keys()
    for key, value in reference_weights.items():
        assert (resumed_weights[key] - value).abs().max().item() < 1e-5, key


def test_curriculum_chains_1f_into_4f(training):
    work, ids = training["work"], training["jobs"]["curriculum"]
    logs = [job_log(work, f"fit-{stage}", job) for stage, job in ids.items()]
    wait_jobs(list(ids.values()), training["deadline"], logs=logs)
    for stage, job in ids.items():
        info = job_info(job)
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), (stage, info)
        assert info["NumNodes"] == "2", (stage, info)
    # afterok: the 4-frame job started only once the 1-frame job had ended
    first, second = job_info(ids["pretrain_1f"]), job_info(ids["pretrain_4f"])
    assert second["StartTime"] >= first["EndTime"], (first["EndTime"], second["StartTime"])

    run_1f, run_4f = work / "curriculum" / "1f", work / "curriculum" / "4f"
    for run in (run_1f, run_4f):
        assert json.loads((run / "metrics" / "final.json").read_text())["step"] == (STEPS_1F if run == run_1f else 8)
        assert list((run / "metrics").glob("eval_step_*.json")) and list((run / "tb").glob("events.*"))
    log_4f = logs[1].read_text()
    assert "video_model.temporal_embed: (1, 1, " in log_4f and "(zeros)" in log_4f, log_4f[-3000:]
    assert "with 1 row(s): inflated to 4 (load_temporal_fix=zeros)" in log_4f, log_4f[-3000:]
    for log in logs:
        assert "FutureWarning" not in log.read_text(), log

    # the 4-frame weights are the 1-frame weights with the temporal embedding inflated 1 -> 4 (zeros)
    w1, w4 = final_weights(run_1f), final_weights(run_4f)
    t1, t4 = w1["video_model.temporal_embed"], w4["video_model.temporal_embed"]
    assert (t1.shape[1], t4.shape[1]) == (1, 4)
    assert t1.abs().max().item() > 1e-4  # trained away from its zero init, so the check below can fail
    assert (t4[:, :1] - t1).abs().max().item() < 1e-6
    assert t4[:, 1:].abs().max().item() < 1e-6
    assert w1.keys() == w4.keys()
    for key in w1.keys() - {"video_model.temporal_embed"}:
        assert (w4[key] - w1[key]).abs().max().item() < 1e-6, key


def test_failed_1f_stage_cancels_the_4f_stage(training):
    ids = training["jobs"]["failing"]
    wait_jobs(
        list(ids.values()),
        training["deadline"],
        logs=[job_log(training["work"], f"fit-{stage}", job) for stage, job in ids.items()],
    )
    first, second = job_info(ids["pretrain_1f"]), job_info(ids["pretrain_4f"])
    assert first["JobState"] == "FAILED" and first["ExitCode"] != "0:0", first
    assert (second["JobState"], second["Reason"]) == ("CANCELLED", "DependencyNeverSatisfied"), second
    log = job_log(training["work"], "fit-pretrain_1f", ids["pretrain_1f"]).read_text()
    assert "empty_text_model" in log and "1-frame pretraining failed with exit code" in log, log[-3000:]


# ---- 5. checks at submission: nothing that cannot start is submitted ---------------------------------------------


def test_submission_lowers_defaults_and_refuses_what_cannot_fit(tmp_path):
    (tmp_path / "logs").mkdir()
    make_shards = str(REPO / "slurm" / "make_shards.sh")
    refused = subprocess.run(
        [
            "bash",
            str(REPO / "slurm" / "submit.sh"),
            "--cpus-per-task=16",
            "--job-name=fit-refused-cpus",
            make_shards,
            "csv",
            "--out",
            "x",
        ],
        cwd=tmp_path,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2, refused.stderr
    assert "asks --cpus-per-task=16" in refused.stderr and "lower --cpus-per-task to 2" in refused.stderr
    assert jobs_named("fit-refused-cpus") == ""

    # the curriculum: a CPU request that cannot fit, then a bad value in the LAST stage's overrides
    env = dict(
        GPUS_PER_NODE="0",
        RUN_DIR="refused",
        CONFIG_1F=str(REPO / "configs" / "tiny_1f.json"),
        CONFIG_4F=str(REPO / "configs" / "tiny_4f.json"),
        CONFIG_FT=str(REPO / "configs" / "tiny_finetune.json"),
    )
    from pipeline.demo.tiny_assets import write_tiny_assets

    tiny = write_tiny_assets(tmp_path / "assets")
    assets = " ".join(f"--set {o}" for o in tiny.overrides())
    ft_assets = (
        f"--set model.text.model={tiny.text_model} --set data.options.tokenizer={tiny.text_model} "
        f"--set data.train[0].shards={tiny.shards('videos')} --set data.eval[0].shards={tiny.shards('val')}"
    )
    cases = [
        (
            {"CPUS_PER_TASK": "16"},
            ["pretrain_1f asks --cpus-per-task=16", "CPUS_PER_TASK=2", "stage pretrain_1f: its resources do not fit"],
        ),
        (
            {"ARGS_1F": assets, "ARGS_4F": assets, "ARGS_FT": ft_assets + " --set optim.total_steps=0"},
            ["finetune_msrvtt: ", "optim.total_steps: must be >= 1", "stage finetune_msrvtt: config check failed"],
        ),
    ]
    for extra, expected in cases:
        out = subprocess.run(
            ["bash", str(REPO / "slurm" / "curriculum.sh"), "--finetune", "--evaluate", "--name", "fit-refused"],
            cwd=tmp_path,
            env=job_env(**env, **extra),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 2 and out.stdout == "", (extra, out.stdout, out.stderr)
        for text in expected:
            assert text in out.stderr, (text, out.stderr)
        assert "nothing was submitted" in out.stderr
        assert not subprocess.run(
            ["squeue", "-h", "-o", "%j"], capture_output=True, text=True, timeout=30
        ).stdout.count("fit-refused-")


# ---- 6. docs/SLURM.md's first try on a new cluster ----------------------------------------------------------------

NEVER_STARTS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints")


def test_first_hour_tiny_curriculum_runs_with_no_overrides(tmp_path):
    """The commands of docs/SLURM.md's first section, from a fresh directory, on the 2-node test cluster."""
    env = job_env(PYTHONPATH=str(REPO))
    made = subprocess.run(
        ["make", "-f", str(REPO / "Makefile"), "tiny-assets"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    out = subprocess.run(
        ["bash", str(REPO / "slurm" / "curriculum.sh"), "--tiny", "--finetune", "--evaluate"],
        cwd=tmp_path,
        env=dict(env, GPUS_PER_NODE="0"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    ids = dict(line.split() for line in out.stdout.splitlines())
    assert list(ids) == ["pretrain_1f", "pretrain_4f", "finetune_msrvtt", "evaluate"], out.stdout
    assert "using --cpus-per-task=2" in out.stderr  # the scripts' 8 CPUs per task, lowered to fit
    logs = {stage: tmp_path / "logs" / f"fit-{stage}-{job}.out" for stage, job in ids.items()}
    deadline = time.time() + 420
    try:
        while queued(list(ids.values())):
            waiting = queued(list(ids.values()))
            assert not any(reason in waiting for reason in NEVER_STARTS), waiting
            if time.time() > deadline:
                wait_jobs(list(ids.values()), deadline, logs=list(logs.values()))  # fails with the logs
            time.sleep(1.0)
    finally:
        cancel(list(ids.values()))
    for stage, job in ids.items():
        info = job_info(job)
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), (stage, logs[stage].read_text()[-3000:])
    run = tmp_path / "runs" / "tiny_curriculum"
    assert json.loads((run / "msrvtt" / "metrics" / "evaluate_final.json").read_text())
    for stage, log in logs.items():
        text = log.read_text()
        assert "FutureWarning" not in text, (stage, [line for line in text.splitlines() if "FutureWarning" in line][:3])
        if stage != "evaluate":
            assert "train: temporal embedding: 4 row(s)" in text, (stage, text[-3000:])
    assert "row 0 trains, rows 1-3 get no gradient" in logs["pretrain_1f"].read_text()
    assert "with 4 row(s): no inflation" in logs["pretrain_4f"].read_text()
    assert logs["evaluate"].read_text().rstrip().endswith("evaluation finished")
