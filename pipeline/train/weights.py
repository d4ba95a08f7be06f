"""Load a trained model for evaluation or search from any of the forms a run leaves behind.

- a weights folder (`weights.safetensors` + `model_config.json`, what the trainer exports to
  weights/final and weights/best): no DeepSpeed needed;
- a finished DeepSpeed checkpoint folder of a run (`checkpoints/step_N` with its COMPLETE marker):
  checked file by file first (`checkpointing.verify_checkpoint`), then consolidated to fp32 with DeepSpeed's
  zero_to_fp32 on this one process, whose torch.load calls are restricted to weights_only;
- a weights file the models package reads (e.g. the released `model_best.pth.tar`), built with the
  architecture of the given model config.

Nothing read here can run code (docs/TRAINING.md, "Which files are loaded how"); a damaged or refused file
raises foundation.safeload.DamagedFileError (a ValueError) naming it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from pipeline.train import checkpointing as ckpt
from foundation.safeload import DamagedFileError

log = logging.getLogger(__name__)


def consolidated_state_dict(checkpoint_dir: Path, info: dict | None = None) -> dict[str, torch.Tensor]:
    """fp32 state dict of a finished trainer checkpoint, whatever its ZeRO stage or rank count.

    info: the folder's run info from `checkpointing.verify_checkpoint` (which runs here when not given)."""
    checkpoint_dir = Path(checkpoint_dir)
    info = info or ckpt.verify_checkpoint(checkpoint_dir)
    if info["zero_stage"] == 0:
        # no partitioning: the module weights are whole in the model-states file
        file = checkpoint_dir / "mp_rank_00_model_states.pt"
        states = ckpt.load_deepspeed_file(file)
        module = states.get("module") if isinstance(states, dict) else None
        if not isinstance(module, dict) or not all(isinstance(v, torch.Tensor) for v in module.values()):
            raise DamagedFileError(file, "holds no 'module' state dict", ckpt.damaged_advice(checkpoint_dir))
        return {k: v.float() for k, v in module.items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    with ckpt.deepspeed_loads_restricted(checkpoint_dir):
        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir.parent), tag=checkpoint_dir.name)


def load_model(path: str | Path, model_cfg=None) -> torch.nn.Module:
    """A FrozenInTime with the weights at `path` (see the module docstring), on the CPU, in fp32."""
    from models import FrozenInTime, ModelConfig, load_pretrained, load_weights_into
    from models.checkpoint import CONFIG_FILE
    path = Path(path)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return load_pretrained(path)
    if path.is_dir() and (path / ckpt.MARKER).is_file():
        info = ckpt.verify_checkpoint(path)
        model = FrozenInTime(ModelConfig.from_dict(info["config"]["model"], f"{path}/trainer.json: model"),
                             init_weights=False)
        missing, unexpected = model.load_state_dict(consolidated_state_dict(path, info), strict=False)
        # DeepSpeed's consolidation leaves out non-persistent buffers only; any missing parameter is an error
        params = {name for name, _ in model.named_parameters()}
        if set(missing) & params or unexpected:
            raise ValueError(f"{path}: checkpoint does not match the model: missing {sorted(set(missing) & params)}"
                             f", unexpected {sorted(unexpected)}")
        return model
    if path.is_dir():
        raise FileNotFoundError(f"{path}: neither a weights folder ({CONFIG_FILE}) nor a finished checkpoint "
                                f"({ckpt.MARKER} marker)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file or folder")
    if model_cfg is None:
        raise ValueError(f"{path}: a plain weights file needs a model config for the architecture")
    model = FrozenInTime(model_cfg, init_weights=False)
    load_weights_into(model, path)
    return model
