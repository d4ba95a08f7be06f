"""The first command (`make demo`): built-in data -> 1-frame stage -> 4-frame stage -> evaluation -> table.

Every step runs the code users run on a cluster (docs/DEMO.md):

1. `pipeline.demo.render.generate`: render the captioned shape clips and images with ffmpeg and pack them with
   make-shards' CSV path (reused when already there with the same seed and sizes);
2. `launch/train.py` under torchrun (2 ranks, DeepSpeed ZeRO on CPU) with configs/demo_1f.json: images + clips
   at T=1, a model whose `num_frames` is 1;
3. `launch/train.py` with configs/demo_4f.json, starting from stage 1's weights: the model has num_frames 4,
   so loading inflates `temporal_embed` from [1, 1, D] to [1, 4, D] (`checkpoint.load_temporal_fix`);
4. `launch/evaluate.py` on the held-out clips for both stages (the 1-frame model sees 1 frame, the
   4-frame model 4), then the demo's query sets (`pipeline.demo.metrics`) on embeddings computed in this
   process with the same loader and weights; the overall numbers must agree with evaluate.py's;
5. a table on stdout and in `{out}/results.md`, all numbers in `{out}/results.json`.

Every stage's output (config.json, TensorBoard events, checkpoints, weights, logs) stays under `{out}`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from foundation.fsutil import atomic_write_json, atomic_write_text
from models.tiny import write_tiny_text_model
from pipeline.data.loader import build_eval_loader
from pipeline.data.transforms import normalize_video
from pipeline.demo.metrics import demo_query_metrics
from pipeline.demo.render import DemoSpec, ffmpeg_exe, generate, read_table
from pipeline.train.checkpoints import load_model
from pipeline.train.config import load_config
from pipeline.train.distributed import free_port

log = logging.getLogger(__name__)

STAGES = ("1f", "4f")
MARGIN = 20.0  # the learning check: 4-frame motion-only R@1 >= 1-frame's + MARGIN points

# One intra-op thread in every process of the demo: the training ranks, launch/evaluate.py and the demo's own
# embedding. A float sum split over another number of threads rounds differently (the video embeddings of
# one model differ by ~1e-6 between 1 and 2 threads), and 1900 training steps grow a last-bit difference
# into another model, so with the count left to the caller's OMP_NUM_THREADS / MKL_NUM_THREADS or to the
# core count (one rank runs without torchrun, which sets 1 only when the variable is unset) the same seed
# gave another table (docs/DEMO.md, "Reproducibility"). One thread per rank is also the fastest here.
THREADS = 1
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def child_env(environ) -> dict:
    """The environment of the demo's children: the caller's, with the thread count pinned to THREADS."""
    return {**environ, **{name: str(THREADS) for name in THREAD_VARIABLES}}


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with `n` torch intra-op threads; the caller's count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# the demo's text tower: a tiny BERT (models/tiny.py) trained from scratch with the rest
DEMO_TEXT_MODEL = {"arch": "bert", "hidden": 128, "layers": 2, "heads": 4, "max_positions": 32}


@dataclass
class DemoOptions:
    checkout: Path  # the repository whose launch/ the children run
    out: Path = Path("demo_run")
    seed: int = 0
    data: object = None  # pipeline.demo.render.DemoSpec (default sizes when None)
    configs: dict | None = None  # {stage: config}; default checkout/configs/demo_{stage}.json
    nproc: int = 2  # training ranks (torchrun, one per core)
    overrides: dict = field(default_factory=lambda: {"1f": [], "4f": []})  # extra --set per stage
    text_model: dict = field(default_factory=lambda: dict(DEMO_TEXT_MODEL))
    shard_workers: int = 2
    progress: bool = True


def stage_dir(out: Path, stage: str) -> Path:
    return Path(out) / f"demo_{stage}"


def _run(cmd: list[str], log_path: Path, what: str, checkout: Path) -> None:
    """Run a child process in the repository root `checkout` (with `child_env`), its output copied into
    `log_path` and its progress lines into our log; raise naming the log when it fails.

    Children run the entry points as modules (`python -m launch.train`) from the repository root, so they
    import this checkout whether or not it is pip-installed.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s: %s (log: %s)", what, " ".join(cmd), log_path)
    started = time.time()
    with open(log_path, "ab") as sink:
        proc = subprocess.Popen(
            cmd, cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(os.environ)
        )
        try:
            for line in proc.stdout:
                sink.write(line)
                sink.flush()
                text = line.decode(errors="replace").rstrip()
                if any(f" {name}: " in text for name in PROGRESS_LOGGERS):
                    log.info("  %s", text.split(": ", 1)[-1])
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(f"{what} failed with exit code {code}; last lines of {log_path}:\n" + "\n".join(tail))
    log.info("%s done in %.0f s", what, time.time() - started)


PROGRESS_LOGGERS = ("pipeline.train.trainer", "pipeline.train.evaluation")


def train_command(config: Path, overrides: list[str], nproc: int) -> list[str]:
    """torchrun with `nproc` ranks on this machine (docs/TRAINING.md), or a plain process for one rank."""
    script = ["-m", "launch.train", "--config", str(config)]
    for item in overrides:
        script += ["--set", item]
    if nproc == 1:
        return [sys.executable] + script
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ] + script


def environment() -> dict:
    """What besides the seed decides the numbers: versions of what renders, packs and trains, the CPU and the
    kernels torch picked for it (docs/DEMO.md, "Reproducibility"). Two runs can only match when these do."""

    versions = {}
    for package in ("torch", "numpy", "deepspeed", "transformers", "av", "simplejpeg"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        ffmpeg = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True, timeout=30).stdout.split(
            "\n"
        )[0]
    except (OSError, subprocess.SubprocessError) as err:
        ffmpeg = f"unknown ({err})"
    return {
        "versions": versions,
        "ffmpeg": ffmpeg,
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads_per_process": THREADS,
    }


def cpu_model() -> str:
    """'AMD EPYC (family 25, model 17, stepping 1)': a VM often shows only the brand, the numbers tell hosts apart."""
    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block is enough
            fields.setdefault(key.strip(), value.strip())
        return (
            f"{fields['model name']} (family {fields['cpu family']}, model {fields['model']}, "
            f"stepping {fields.get('stepping', '?')})"
        )
    except (OSError, KeyError):
        return platform.processor() or platform.machine()


def train_stage(config: Path, sets: list[str], nproc: int, log_path: Path, stage: str, checkout: Path) -> None:
    """One stage's launch/train.py run, as `make demo` runs it."""
    _run(train_command(config, sets, nproc), log_path, f"stage {stage} training", checkout)


def common_overrides(out: Path, folders: dict, text_model: Path, seed: int) -> list[str]:
    return [
        f"seed={seed}",
        f"data.options.seed={seed}",
        f"model.text.model={text_model}",
        f"data.options.tokenizer={text_model}",
        f"data.train[0].shards={folders['images']}",
        f"data.train[1].shards={folders['train']}",
        f"data.eval[0].shards={folders['test']}",
    ]


def run_demo(opts: DemoOptions) -> dict:
    """Run the whole demo; returns the results document (also written to {out}/results.json)."""

    out = Path(opts.out).resolve()
    checkout = Path(opts.checkout).resolve()
    configs = opts.configs or {stage: checkout / "configs" / f"demo_{stage}.json" for stage in STAGES}
    started = time.time()
    spec = opts.data or DemoSpec(seed=opts.seed)
    spec = dataclasses.replace(spec, seed=opts.seed)
    timings = {}

    t = time.time()
    folders = generate(out / "data", spec, workers=opts.shard_workers, progress=opts.progress)
    text_model = write_tiny_text_model(out / "text_model", seed=opts.seed, **opts.text_model)
    timings["data"] = time.time() - t
    base = common_overrides(out, folders, text_model, opts.seed)
    data_stamp = json.loads((out / "data" / "demo.json").read_text())

    trained_earlier = False
    for stage in STAGES:
        t = time.time()
        run_dir = stage_dir(out, stage)
        sets = base + [f"output_dir={run_dir}"]
        if stage == "4f":
            start = stage_dir(out, "1f") / "weights" / "final"
            sets.append(f"checkpoint.load_checkpoint={start}")
        sets += list(opts.overrides.get(stage, []))
        if not trained_earlier and stage_is_current(run_dir, load_config_raw(configs[stage], sets), data_stamp):
            log.info(
                "stage %s already trained in %s on this data with this config; reusing it (delete the folder "
                "to retrain)",
                stage,
                run_dir,
            )
        else:
            if run_dir.exists():
                # its TensorBoard events and checkpoints belong to other data or another config
                log.info("stage %s: removing the earlier run in %s before retraining", stage, run_dir)
                shutil.rmtree(run_dir)
            train_stage(configs[stage], sets, opts.nproc, out / "logs" / f"train_{stage}.log", stage, checkout)
            atomic_write_json(run_dir / DATA_STAMP, data_stamp)
            trained_earlier = True  # a later stage starts from these weights: it must be retrained too
        timings[f"train_{stage}"] = time.time() - t

    results = {"seed": opts.seed, "environment": environment(), "stages": {}}
    for stage in STAGES:
        t = time.time()
        run_dir = stage_dir(out, stage)
        weights = run_dir / "weights" / "final"
        metrics_file = out / "eval" / f"evaluate_{stage}.json"
        _run(
            [
                sys.executable,
                "-m",
                "launch.evaluate",
                "--checkpoint",
                str(weights),
                "--config",
                str(run_dir / "config.json"),
                "--out",
                str(metrics_file),
            ],
            out / "logs" / f"evaluate_{stage}.log",
            f"stage {stage} evaluation",
            checkout,
        )
        evaluated = json.loads(metrics_file.read_text())["metrics"]
        queries = query_metrics(weights, run_dir / "config.json", out / "data" / "test.csv")
        _check_agreement(evaluated, queries, stage)
        results["stages"][stage] = {"weights": str(weights), "evaluate": evaluated, "queries": queries}
        timings[f"evaluate_{stage}"] = time.time() - t

    results["check"] = learning_check(results)
    timings["total"] = time.time() - started
    results["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    results["out"] = str(out)
    atomic_write_json(out / "results.json", results)
    table = results_table(results)
    atomic_write_text(out / "results.md", table + "\n")
    return results


DATA_STAMP = "demo_data.json"  # in a stage folder: the data/demo.json its weights were trained on


def load_config_raw(config: Path, sets: list[str]) -> dict:
    return load_config(config, sets).raw


def stage_is_current(run_dir: Path, wanted_config: dict, data_stamp: dict) -> bool:
    """True when run_dir holds final weights trained with this config on this data (so a re-run can skip it).

    Both matter: the config names the data folders, not their contents, and re-rendered data (another
    generator version or other sizes) lands in the same folders."""
    try:
        return (
            (run_dir / "weights" / "final" / "weights.safetensors").is_file()
            and json.loads((run_dir / "config.json").read_text()) == wanted_config
            and json.loads((run_dir / DATA_STAMP).read_text()) == data_stamp
        )
    except (OSError, ValueError):
        return False


def query_metrics(weights: Path, config: Path, test_table: Path) -> dict:
    """Embed the held-out clips and their captions with the evaluation loader; score the demo query sets."""

    rows = {r["key"]: r for r in read_table(test_table)}
    keys, text_emb, video_emb = embed_eval_set(weights, config)
    missing = sorted(set(rows) - set(keys))
    if missing:
        raise RuntimeError(f"{len(missing)} test clips never came out of the evaluation loader (first: {missing[0]})")
    return demo_query_metrics(text_emb, video_emb, [rows[k] for k in keys])


def embed_eval_set(weights: Path, config: Path):
    """(keys, text embeddings, video embeddings) of the run's first eval dataset, sorted by key, computed with
    THREADS torch threads whatever the caller's count (as launch/evaluate.py under `child_env`)."""

    cfg = load_config(config)
    spec = cfg.data.eval[0]
    model = load_model(weights, cfg.model)
    keys, texts, videos = [], [], []
    with torch.no_grad(), torch_threads(THREADS):
        for batch in build_eval_loader(spec, cfg.data.options, 0, 1):
            video = normalize_video(batch["video"], cfg.data.options.mean, cfg.data.options.std)
            text_emb, video_emb = model(video, batch["text"]["input_ids"], batch["text"]["attention_mask"])
            keys += batch["keys"]
            texts.append(text_emb.numpy())
            videos.append(video_emb.numpy())
    order = np.argsort(keys)
    return [keys[i] for i in order], np.concatenate(texts)[order], np.concatenate(videos)[order]


def _check_agreement(evaluated: dict, queries: dict, stage: str) -> None:
    """launch/evaluate.py and the in-process embedding must agree on the overall text-to-video numbers."""
    ((name, metrics),) = evaluated.items()
    for ours, theirs in (("R1", "t2v_R1"), ("R5", "t2v_R5"), ("MedR", "t2v_MedR")):
        if abs(queries["overall"][ours] - metrics[theirs]) > 1e-6:
            raise RuntimeError(
                f"stage {stage}: launch/evaluate.py gives {theirs} {metrics[theirs]} on {name} but "
                f"the demo's own embedding gives {queries['overall'][ours]}: the two paths differ"
            )


def learning_check(results: dict) -> dict:
    one = results["stages"]["1f"]["queries"]["motion_only"]["R1"]
    four = results["stages"]["4f"]["queries"]["motion_only"]["R1"]
    return {
        "motion_only_R1_1f": one,
        "motion_only_R1_4f": four,
        "margin": four - one,
        "required": MARGIN,
        "passed": bool(four - one >= MARGIN),
    }


QUERY_SETS = (
    ("overall", "all held-out clips"),
    ("motion_only", "motion-only (same shape+colour)"),
    ("motion_only_unseen", "motion-only, unseen combinations"),
    ("appearance", "shape+colour"),
)


def results_table(results: dict) -> str:
    """Markdown table: R@1 / R@5 / MedR per stage and query set, with chance levels."""
    lines = [
        "| model | queries (text -> video) | n | candidates | R@1 | R@5 | MedR | chance R@1 / R@5 / MedR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage in STAGES:
        queries = results["stages"][stage]["queries"]
        for key, label in QUERY_SETS:
            if key not in queries:
                continue
            q, c = queries[key], queries[key]["chance"]
            candidates = {"overall": "all", "appearance": "all"}.get(key, "8")
            lines.append(
                f"| {stage[0]}-frame | {label} | {q['queries']} | {candidates} | {q['R1']:.1f} | "
                f"{q['R5']:.1f} | {q['MedR']:g} | {c['R1']:.1f} / {c['R5']:.1f} / {c['MedR']:g} |"
            )
    check = results["check"]
    lines.append("")
    lines.append(
        f"Learning check (4-frame motion-only R@1 >= 1-frame + {check['required']:g}): "
        f"{check['motion_only_R1_4f']:.1f} vs {check['motion_only_R1_1f']:.1f} -> margin "
        f"{check['margin']:+.1f} points: {'PASSED' if check['passed'] else 'FAILED'}"
    )
    return "\n".join(lines)
