"""Training checkpoints: DeepSpeed engine state + per-rank trainer state, completion markers, retention.

Layout under `{output_dir}/checkpoints/`:

    step_00001000/                 one DeepSpeed checkpoint (engine.save_checkpoint, tag = folder name)
        mp_rank_00_model_states.pt, zero_pp_rank_*_optim_states.pt   (DeepSpeed's files)
        trainer_rank_00000.pt      this rank's loader position + RNG states (every rank writes its own)
        trainer.json               step, world size, ZeRO stage, the run config (rank 0)
        COMPLETE                   written by rank 0 after a barrier, i.e. after every rank has saved

A checkpoint without COMPLETE is half-written (the job died while saving) and is never resumed from.
"""
from __future__ import annotations

import io
import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from pipeline.fsutil import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
TAG_PATTERN = re.compile(r"^step_(\d{8,})$")


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    match = TAG_PATTERN.match(tag)
    if not match:
        raise ValueError(f"{tag!r} is not a checkpoint tag (expected step_NNNNNNNN)")
    return int(match.group(1))


def list_checkpoints(root: Path, complete_only: bool = True) -> list[Path]:
    """Checkpoint folders under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and TAG_PATTERN.match(p.name)
             and (not complete_only or (p / MARKER).is_file())]
    return sorted(found, key=lambda p: step_of(p.name))


def latest_complete(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


UNIVERSAL_SUFFIX = "_universal"


def is_universal(path: Path) -> bool:
    """A `ds_to_universal` output folder (loadable on any number of ranks)."""
    return (Path(path) / "zero").is_dir() and not (Path(path) / MARKER).is_file()


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    """`auto` -> the newest complete checkpoint under root (None if there is none); a path must be a complete
    checkpoint or a `ds_to_universal` conversion of one."""
    if not resume:
        return None
    if resume == "auto":
        return latest_complete(root)
    path = Path(resume)
    if is_universal(path):
        return path
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"--resume {resume}: no {MARKER} marker in that folder; it is not a finished "
                                f"checkpoint (use --resume auto to take the newest finished one)")
    return path


def mark_complete(path: Path, step: int) -> None:
    atomic_write_json(Path(path) / MARKER, {"step": step})


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, and unfinished ones older than the newest."""
    complete = list_checkpoints(root)
    if not complete:
        return []
    doomed = complete[:-keep_last] if keep_last > 0 else []
    newest = step_of(complete[-1].name)
    doomed += [p for p in list_checkpoints(root, complete_only=False)
               if not (p / MARKER).is_file() and step_of(p.name) < newest]
    for path in doomed:
        # the marker goes first, so a deletion cut short leaves a folder that is no longer "complete"
        (path / MARKER).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
    if doomed:
        log.info("removed old checkpoints: %s", ", ".join(p.name for p in doomed))
    return doomed


def rank_state_path(path: Path, rank: int) -> Path:
    return Path(path) / f"trainer_rank_{rank:05d}.pt"


def rng_state() -> dict:
    # numpy's key array as a tensor, so the file loads with weights_only=True
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                    has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_rank_state(path: Path, rank: int, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(rank_state_path(path, rank), buffer.getvalue())


def load_rank_state(path: Path, rank: int) -> dict:
    file = rank_state_path(path, rank)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: this rank's trainer state is missing from the checkpoint")
    return torch.load(file, map_location="cpu", weights_only=True)


def write_run_info(path: Path, info: dict) -> None:
    atomic_write_json(Path(path) / "trainer.json", info)


def read_run_info(path: Path) -> dict:
    path = Path(path)
    if not (path / "trainer.json").is_file() and path.name.endswith(UNIVERSAL_SUFFIX):
        path = path.with_name(path.name[:-len(UNIVERSAL_SUFFIX)])     # the checkpoint it was converted from
    file = path / "trainer.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing; {path} was not written by pipeline.trainer")
    return json.loads(file.read_text())
