"""One checkpoint folder's files: writing them, reading them without running code, checking them.

Layout of `{output_dir}/checkpoints/step_NNNNNNNN/` (pipeline/train/checkpoints.py saves, lists and loads them):

    mp_rank_00_model_states.pt, zero_pp_rank_*_optim_states.pt   DeepSpeed's files (engine.save_checkpoint)
    trainer_rank_00000.pt      this rank's loader position + RNG states (every rank writes its own)
    trainer.json               step, world size, ZeRO stage, the run config (rank 0)
    COMPLETE                   written by rank 0 after a barrier, i.e. after every rank has saved

A checkpoint without COMPLETE is half-written (the job died while saving) and is never resumed from.

Every file is read without running code from it (foundation/safeload.py): the .pt files with torch's
weights_only unpickler and exactly the DeepSpeed classes its files hold (`deepspeed_globals`), also when
DeepSpeed itself reads them (`deepspeed_loads_restricted`); the JSON files as JSON of the expected shape.
`verify_checkpoint` checks a whole folder before anything is loaded from it, so a damaged file is reported
by name (and `--resume auto` can fall back to the previous checkpoint) instead of failing half-way.
"""

from __future__ import annotations

import contextlib
import io
import random
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from foundation.fsutil import atomic_write_bytes, atomic_write_json
from foundation.safeload import DamagedFileError, load_torch_file, read_json, restricted_torch_load

MARKER = "COMPLETE"
TAG_PATTERN = re.compile(r"^step_(\d{8,})$")


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    match = TAG_PATTERN.match(tag)
    if not match:
        raise ValueError(f"{tag!r} is not a checkpoint tag (expected step_NNNNNNNN)")
    return int(match.group(1))


UNIVERSAL_SUFFIX = "_universal"


def is_universal(path: Path) -> bool:
    """A `ds_to_universal` output folder (loadable on any number of ranks)."""
    return (Path(path) / "zero").is_dir() and not (Path(path) / MARKER).is_file()


def mark_complete(path: Path, step: int) -> None:
    atomic_write_json(Path(path) / MARKER, {"step": step})


def rank_state_path(path: Path, rank: int) -> Path:
    return Path(path) / f"trainer_rank_{rank:05d}.pt"


def rng_state() -> dict:
    # numpy's key array as a tensor, so the file loads with weights_only=True
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
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


# the trainer's evaluation bookkeeping, saved with each rank's state and given back on resume
PROGRESS_KEYS = ("best", "evaluated_step", "last_eval")
RANK_STATE_KEYS = ("step", "loader", "rng") + PROGRESS_KEYS


def load_rank_state(path: Path, rank: int, mmap: bool = False) -> dict:
    file = rank_state_path(path, rank)
    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: this rank's trainer state is missing from the checkpoint; {damaged_advice(path)}"
        )
    state = load_torch_file(file, advice=damaged_advice(path), zip_only=True, mmap=mmap)
    missing = [k for k in RANK_STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise DamagedFileError(file, f"is not a trainer state (no {', '.join(missing)})", damaged_advice(path))
    return state


def damaged_advice(path: Path) -> str:
    """What to do about a damaged file in checkpoint folder `path`."""
    path = Path(path)
    return (
        f"the checkpoint {path.name} cannot be used: resume from an earlier one (--resume auto falls back to "
        f"the previous complete checkpoint by itself), or evaluate the run's weights/final or weights/best "
        f"instead; delete {path} once you no longer need it"
    )


def write_run_info(path: Path, info: dict) -> None:
    atomic_write_json(Path(path) / "trainer.json", info)


RUN_INFO_FIELDS = {"step": int, "world_size": int, "zero_stage": int, "config": dict}


def read_run_info(path: Path) -> dict:
    path = Path(path)
    if not (path / "trainer.json").is_file() and path.name.endswith(UNIVERSAL_SUFFIX):
        path = path.with_name(path.name[: -len(UNIVERSAL_SUFFIX)])  # the checkpoint it was converted from
    file = path / "trainer.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing; {path} was not written by pipeline.train.trainer")
    info = read_json(file, damaged_advice(path), RUN_INFO_FIELDS)
    if (
        info["world_size"] < 1
        or info["zero_stage"] not in (0, 1, 2, 3)
        or not isinstance(info["config"].get("model"), dict)
    ):
        raise DamagedFileError(
            file,
            f"world_size {info['world_size']}, zero_stage {info['zero_stage']} or the "
            f"config's model section is not what the trainer writes",
            damaged_advice(path),
        )
    return info


# ---- DeepSpeed's files --------------------------------------------------------------------------------

DEEPSPEED_ALLOWED = "tensors, containers and DeepSpeed's LossScaler, ZeroStageEnum, fragment_address"


def deepspeed_globals() -> tuple:
    """The non-tensor classes DeepSpeed 0.19's checkpoint files hold (found by listing the GLOBAL opcodes of
    ZeRO 0/1/2/3 checkpoints in fp32 and bf16, and of a ds_to_universal conversion: docs/TRAINING.md). All
    three are plain records: building one sets attributes and runs nothing else."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler  # optimizer state: the (static) scale
    from deepspeed.runtime.zero.config import ZeroStageEnum  # optimizer state: the ZeRO stage
    from deepspeed.utils.tensor_fragment import fragment_address  # ZeRO 1/2 param_slice_mappings

    return LossScaler, ZeroStageEnum, fragment_address


def load_deepspeed_file(file: Path, mmap: bool = False):
    """One of DeepSpeed's .pt files of a checkpoint folder, read without running code."""
    file = Path(file)
    return load_torch_file(
        file, deepspeed_globals(), DEEPSPEED_ALLOWED, damaged_advice(file.parent), zip_only=True, mmap=mmap
    )


@contextlib.contextmanager
def deepspeed_loads_restricted(path: Path) -> Iterator[None]:
    """DeepSpeed's own torch.load calls (engine.load_checkpoint, zero_to_fp32) as load_deepspeed_file."""
    with restricted_torch_load(deepspeed_globals(), DEEPSPEED_ALLOWED, damaged_advice(path)):
        yield


def expected_files(info: dict) -> list[list[str]]:
    """The files a finished checkpoint of this run info must hold; each entry lists the names that satisfy it
    (DeepSpeed prefixes the optimizer files with bf16_ under bf16)."""
    ranks, stage = range(info["world_size"]), info["zero_stage"]
    files = [[MARKER], ["trainer.json"]] + [[rank_state_path(Path(), r).name] for r in ranks]
    if stage < 3:
        files.append(["mp_rank_00_model_states.pt"])
    for r in ranks:
        if stage == 3:
            files.append([f"zero_pp_rank_{r}_mp_rank_00_model_states.pt"])
        if stage > 0:
            files.append([f"{pre}zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for pre in ("", "bf16_")])
    return files


def verify_checkpoint(path: Path) -> dict:
    """Check every file of a finished (or ds_to_universal) checkpoint folder without loading its tensors;
    returns its run info. Raises FileNotFoundError / DamagedFileError naming the first bad file.

    The .pt files are opened with mmap: the zip directory and the pickle are read and checked (no global
    outside the allowed set), the tensor data is not, so this costs little next to the load that follows."""
    path = Path(path)
    info = read_run_info(path)
    if is_universal(path):
        files = sorted(path.rglob("*.pt"))
    else:
        marker = read_json(path / MARKER, damaged_advice(path), {"step": int})
        if marker["step"] != info["step"] or (TAG_PATTERN.match(path.name) and step_of(path.name) != info["step"]):
            raise DamagedFileError(
                path / MARKER,
                f"says step {marker['step']}, trainer.json step {info['step']}, folder {path.name}: they must agree",
                damaged_advice(path),
            )
        for names in expected_files(info):
            if not any((path / name).is_file() for name in names):
                raise FileNotFoundError(f"{path / names[0]}: missing from the checkpoint; {damaged_advice(path)}")
        files = sorted(path.glob("*.pt"))
    for file in files:
        if file.name.startswith("trainer_rank_"):
            load_rank_state(path, int(file.stem.rsplit("_", 1)[1]), mmap=True)
        else:
            load_deepspeed_file(file, mmap=True)
    return info


def consolidated_state_dict(checkpoint_dir: Path, info: dict | None = None) -> dict[str, torch.Tensor]:
    """fp32 state dict of a finished trainer checkpoint, whatever its ZeRO stage or rank count.

    info: the folder's run info from `verify_checkpoint` (which runs here when not given)."""
    checkpoint_dir = Path(checkpoint_dir)
    info = info or verify_checkpoint(checkpoint_dir)
    if info["zero_stage"] == 0:
        # no partitioning: the module weights are whole in the model-states file
        file = checkpoint_dir / "mp_rank_00_model_states.pt"
        states = load_deepspeed_file(file)
        module = states.get("module") if isinstance(states, dict) else None
        if not isinstance(module, dict) or not all(isinstance(v, torch.Tensor) for v in module.values()):
            raise DamagedFileError(file, "holds no 'module' state dict", damaged_advice(checkpoint_dir))
        return {k: v.float() for k, v in module.items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with deepspeed_loads_restricted(checkpoint_dir):
        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir.parent), tag=checkpoint_dir.name)
