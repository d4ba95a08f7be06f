"""A run's checkpoints and the models they yield: save, resume, prune, export, and `load_model` for every
weights source (docs/TRAINING.md, "Checkpoints and resume").

`CheckpointManager` does the trainer's checkpoint work: a step checkpoint under `{output_dir}/checkpoints/`
(DeepSpeed's engine state + each rank's loader position and RNG states, COMPLETE once every rank has written),
resume (`auto` or a folder; every file checked first, `auto` falls back past damaged ones and sets them
aside), pruning to `checkpoint.keep_last`, and the exported weights folders `weights/final` and `weights/best`.
What one checkpoint folder holds, and how its files are written, read and checked, is
pipeline/train/checkpoint_format.py.

`load_model(source)` is the one way to get a trained model for evaluation, search, the demo, tests and
benchmarks, from an exported weights folder, a finished checkpoint folder or the original's released file.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from foundation.fsutil import atomic_write_json
from foundation.safeload import DamagedFileError
from models import FrozenInTime, ModelConfig, load_pretrained, load_weights_into, save_pretrained
from models.checkpoint import CONFIG_FILE, model_config_from_original, read_original_checkpoint
from pipeline.train import checkpoint_format as fmt
from pipeline.train.checkpoint_format import MARKER, step_of
from pipeline.train.config import RunConfig
from pipeline.train.deepspeed_internals import loading_universal_checkpoint
from pipeline.train.distributed import DistEnv

log = logging.getLogger(__name__)


# ---- the checkpoints of a run ---------------------------------------------------------------------------


def list_checkpoints(root: Path, complete_only: bool = True) -> list[Path]:
    """Checkpoint folders under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and fmt.TAG_PATTERN.match(p.name) and (not complete_only or (p / MARKER).is_file())
    ]
    return sorted(found, key=lambda p: step_of(p.name))


def latest_complete(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    """`auto` -> the newest complete checkpoint under root (None if there is none); a path must be a complete
    checkpoint or a `ds_to_universal` conversion of one."""
    found = resume_candidates(resume, root)
    return found[0] if found else None


def resume_candidates(resume: str | None, root: Path) -> list[Path]:
    """The checkpoints `--resume` may load, in the order to try them: `auto` -> every complete one under
    root, newest first (a damaged one falls back to the next); a path -> just that one."""
    if not resume:
        return []
    if resume == "auto":
        return list_checkpoints(root)[::-1]
    path = Path(resume)
    if fmt.is_universal(path):
        return [path]
    if not (path / MARKER).is_file():
        raise FileNotFoundError(
            f"--resume {resume}: no {MARKER} marker in that folder; it is not a finished "
            f"checkpoint (use --resume auto to take the newest finished one)"
        )
    return [path]


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, and unfinished ones older than the newest."""
    complete = list_checkpoints(root)
    if not complete:
        return []
    doomed = complete[:-keep_last] if keep_last > 0 else []
    newest = step_of(complete[-1].name)
    doomed += [
        p
        for p in list_checkpoints(root, complete_only=False)
        if not (p / MARKER).is_file() and step_of(p.name) < newest
    ]
    for path in doomed:
        # the marker goes first, so a deletion cut short leaves a folder that is no longer "complete"
        (path / MARKER).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
    if doomed:
        log.info("removed old checkpoints: %s", ", ".join(p.name for p in doomed))
    return doomed


def first_sound_checkpoint(
    resume: str, candidates: list[Path], any_rank_failed=lambda failed: failed, set_aside: bool = False
) -> Path:
    """The first of `candidates` (resume_candidates' order) whose files check out (verify_checkpoint) on every
    rank, found before anything is loaded, so a damaged file never fails a load half-way or on one rank only.

    `--resume auto` falls back past damaged checkpoints, logging each one and why; an explicit path that is
    damaged raises its error, and so does auto when none is left. any_rank_failed(local_failure) -> whether any
    rank failed (the trainer passes its all-reduce; one process: the local answer). set_aside (rank 0 of a
    resume): rename the damaged checkpoints newer than the one taken to `step_N.damaged`, so the run can write
    its new checkpoint at that step (a folder with COMPLETE is never written over) and a later `--resume auto`
    does not meet them again."""
    problems: list[Exception] = []
    for path in candidates:
        try:
            fmt.verify_checkpoint(path)
            problem = None
        except (FileNotFoundError, DamagedFileError) as err:
            problem = err
        if not any_rank_failed(problem is not None):
            if set_aside:
                for damaged in candidates[: len(problems)]:
                    _set_aside(Path(damaged))
            return path
        problem = problem or DamagedFileError(
            path, "another rank found a damaged file in it (see that rank's log)", fmt.damaged_advice(path)
        )
        if resume != "auto":
            raise problem
        problems.append(problem)
        log.warning(
            "--resume auto: %s\n-> %s",
            problem,
            "falling back to the previous complete checkpoint"
            if path != candidates[-1]
            else "no earlier complete checkpoint is left",
        )
    raise DamagedFileError(
        Path(candidates[0]).parent,
        f"none of the {len(candidates)} finished checkpoints can be loaded:\n  "
        + "\n  ".join(str(p) for p in problems),
        "move the damaged folders away (or delete them) to start from step 0",
    )


def _set_aside(path: Path) -> Path:
    target = path.with_name(f"{path.name}.damaged")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged{n}")
    path.rename(target)
    log.warning("moved the damaged checkpoint %s aside to %s (look at it, then delete it)", path, target.name)
    return target


# ---- the trainer's side ---------------------------------------------------------------------------------


class CheckpointManager:
    """Checkpoint work for one rank of a run: every method is called on every rank at the same point.

    progress: the trainer's evaluation bookkeeping saved with each rank's state and given back on resume,
    a dict with checkpoint_format.PROGRESS_KEYS (`best`, `evaluated_step`, `last_eval`)."""

    def __init__(self, engine, cfg: RunConfig, env: DistEnv, root: Path, precision: str, any_rank_failed):
        self.engine, self.cfg, self.env = engine, cfg, env
        self.root = Path(root)
        self.precision = precision  # "bf16" | "fp32", recorded in trainer.json
        self.any_rank_failed = any_rank_failed  # local bool -> whether it holds on any rank (an all-reduce)

    def save(self, step: int, loader, progress: dict) -> Path:
        """DeepSpeed state + each rank's loader/RNG state at `step`; COMPLETE once every rank has written,
        then the old checkpoints are pruned."""
        tag = fmt.tag_for_step(step)
        path = self.root / tag
        if (path / MARKER).is_file():
            return path  # already saved at this step (e.g. preempted at end)
        started = time.time()
        self.engine.save_checkpoint(str(self.root), tag=tag, save_latest=False)
        fmt.save_rank_state(
            path, self.env.rank, {"step": step, "loader": loader.state_dict(), "rng": fmt.rng_state(), **progress}
        )
        if self.env.is_main:
            fmt.write_run_info(
                path,
                {
                    "step": step,
                    "world_size": self.env.world_size,
                    "zero_stage": self.cfg.deepspeed.zero_stage,
                    "precision": self.precision,
                    "config": self.cfg.raw,
                },
            )
        if self.env.world_size > 1:
            dist.barrier()  # every rank's files are on disk
        if self.env.is_main:
            fmt.mark_complete(path, step)
            prune(self.root, self.cfg.checkpoint.keep_last)
        log.info("checkpoint %s saved in %.1f s", path, time.time() - started)
        return path

    def resume(self, resume: str, loader) -> tuple[int, dict | None] | None:
        """Load the checkpoint `--resume` names into the engine, `loader` and the RNG states.

        Returns None when `auto` finds no finished checkpoint, else (its step, the saved progress); progress is
        None for a universal checkpoint from another rank count: the loader then starts a fresh pass and the
        RNG stays as seeded."""
        found = [[str(p) for p in resume_candidates(resume, self.root)]] if self.env.is_main else [None]
        if self.env.world_size > 1:
            dist.broadcast_object_list(found, src=0)  # every rank tries the checkpoints rank 0 found
        if not found[0]:
            log.info("--resume %s: no finished checkpoint under %s; starting from step 0", resume, self.root)
            return None
        # every file checked before anything is loaded; auto falls back past damaged checkpoints
        path = first_sound_checkpoint(
            resume, [Path(p) for p in found[0]], self.any_rank_failed, set_aside=self.env.is_main
        )
        universal = fmt.is_universal(path)
        info = fmt.read_run_info(path)
        if info["world_size"] != self.env.world_size and not universal:
            raise RuntimeError(
                f"{path} was saved by {info['world_size']} ranks but this run has {self.env.world_size}. "
                f"ZeRO optimizer state is partitioned per rank, so convert it first:\n"
                f"  python -m deepspeed.checkpoint.ds_to_universal --input_folder {path} "
                f"--output_folder {path}_universal --inject_missing_state\n"
                f"then resume with --resume {path}_universal (model, optimizer and schedule carry over; the "
                f"loader starts a fresh pass)."
            )
        # DeepSpeed's torch.load: weights_only, allow-listed
        with loading_universal_checkpoint(self.engine, universal), fmt.deepspeed_loads_restricted(path):
            loaded, _ = self.engine.load_checkpoint(
                str(path.parent),
                tag=path.name,
                load_module_strict=True,
                load_optimizer_states=True,
                load_lr_scheduler_states=True,
            )
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
        step, progress = int(info["step"]), None
        own = fmt.rank_state_path(path, self.env.rank)
        if info["world_size"] == self.env.world_size and own.is_file() and not universal:
            state = fmt.load_rank_state(path, self.env.rank)
            loader.load_state_dict(state["loader"])
            fmt.set_rng_state(state["rng"])
            progress = {key: state[key] for key in fmt.PROGRESS_KEYS}
        else:
            log.warning(
                "resumed the universal checkpoint %s (saved by %d ranks) on %d: model, optimizer and "
                "schedule restored; the loader starts a fresh pass and the RNG from the seed",
                path,
                info["world_size"],
                self.env.world_size,
            )
        log.info("resumed from %s at step %d", path, step)
        return step, progress

    def export(self, folder: Path, step: int, info: dict | None = None) -> None:
        """Consolidated fp32 weights + model config (loadable without DeepSpeed); collective under ZeRO-3.

        These are the weights the model ran with (under bf16: its bf16 weights, stored as fp32); the fp32
        master weights stay in the DeepSpeed checkpoint (checkpoint_format.consolidated_state_dict).
        """
        import deepspeed

        module = self.engine.module
        gather = (
            deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
            if self.cfg.deepspeed.zero_stage == 3
            else contextlib.nullcontext()
        )
        with gather:
            if self.env.is_main:
                model = module
                if any(p.dtype != torch.float32 for p in model.parameters()):
                    model = FrozenInTime(self.cfg.model, init_weights=False, text_config=module.text_model.config)
                    model.load_state_dict({k: v.float().cpu() for k, v in module.state_dict().items()})
                atomic_write_json(Path(folder) / "export.json", {"run": self.cfg.name, "step": step, **(info or {})})
                save_pretrained(model, self.cfg.model, folder)
        if self.env.world_size > 1:
            dist.barrier()


# ---- loading a trained model ----------------------------------------------------------------------------


def find_run_config(weights: Path) -> Path | None:
    """RUN/config.json for a weights folder the trainer exported (RUN/weights/final, RUN/weights/best)."""
    candidate = weights.resolve().parent.parent / "config.json"
    exported = weights.is_dir() and weights.resolve().parent.name == "weights"
    return candidate if exported and candidate.is_file() else None


def load_model(source: str | Path, model_cfg: ModelConfig | None = None) -> FrozenInTime:
    """A FrozenInTime in eval mode on the CPU, in fp32, with the weights at `source`:

    - a weights folder (`weights.safetensors` + `model_config.json`, what `CheckpointManager.export` writes to
      weights/final and weights/best): no DeepSpeed needed;
    - a finished checkpoint folder (`checkpoints/step_N` with its COMPLETE marker): checked file by file first
      (`checkpoint_format.verify_checkpoint`), the architecture from its trainer.json, the weights consolidated
      to fp32 on this one process;
    - a weights file the models package reads (the original's released `model_best.pth.tar`, a .safetensors
      or plain state-dict file): the architecture of `model_cfg` when given (launch/evaluate.py passes the
      run config's), else the one stored in the released file (its text model: the hub's
      distilbert-base-uncased).

    Nothing read here can run code (docs/TRAINING.md, "Which files are loaded how"); a damaged or refused file
    raises foundation.safeload.DamagedFileError (a ValueError) naming it.
    """
    path = Path(source)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return load_pretrained(path).eval()
    if path.is_dir() and (path / MARKER).is_file():
        info = fmt.verify_checkpoint(path)
        model = FrozenInTime(
            ModelConfig.from_dict(info["config"]["model"], f"{path}/trainer.json: model"), init_weights=False
        )
        missing, unexpected = model.load_state_dict(fmt.consolidated_state_dict(path, info), strict=False)
        # DeepSpeed's consolidation leaves out non-persistent buffers only; any missing parameter is an error
        params = {name for name, _ in model.named_parameters()}
        if set(missing) & params or unexpected:
            raise ValueError(
                f"{path}: checkpoint does not match the model: missing {sorted(set(missing) & params)}"
                f", unexpected {sorted(unexpected)}"
            )
        return model.eval()
    if path.is_dir():
        raise FileNotFoundError(
            f"{path}: neither a weights folder ({CONFIG_FILE}) nor a finished checkpoint ({MARKER} marker)"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"model {path} not found: give a weights folder (weights.safetensors + "
            f"{CONFIG_FILE}, e.g. RUN/weights/final), a finished checkpoint folder "
            f"(RUN/checkpoints/step_N) or the original's .pth.tar file"
        )
    if model_cfg is None:
        model_cfg = model_config_from_original(read_original_checkpoint(path)[1])
    model = FrozenInTime(model_cfg, init_weights=False)
    load_weights_into(model, path)
    return model.eval()
