"""Model weights in and out: our portable folder, the released `.pth.tar`, and their adaptation.

- Our format: a folder with `weights.safetensors`, `model_config.json` (ModelConfig) and
  `text_config.json` (the text model's Hugging Face config, so loading needs no hub), optionally
  `tokenizer/`. `save_pretrained` / `load_pretrained`.
- The original's format (docs/ORIGINAL.md, 'Released checkpoint'): a torch.save dict whose 'state_dict'
  keys may carry `module.` and whose 'config' is a pickled `parse_config.ConfigParser`. It is read with
  torch's weights_only unpickler, which only builds tensors and plain containers; the ConfigParser (and the pathlib
  paths inside it) map to inert stand-ins, so no code from the file ever runs. Any other global is
  refused by name; an empty, cut-short or foreign file is reported as such (foundation/safeload.py).
- `load_weights_into` takes either, fixes prefixes and the DistilBERT `position_ids` difference,
  adapts temporal (docs/ORIGINAL.md, 'Released checkpoint') and spatial position embeddings, and reports
  missing/unexpected keys.
"""

import dataclasses
import logging
import os
import pathlib
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from foundation.fsutil import atomic_path, atomic_write_json
from foundation.safeload import DamagedFileError, load_torch_file, read_json, read_safetensors

from .config import TEMPORAL_FIXES, TEMPORAL_NOISE_STD, ModelConfig
from .video_transformer import resize_pos_embed

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model_config.json"
TEXT_CONFIG_FILE = "text_config.json"


# ---- adaptation ----------------------------------------------------------------------------------


def adapt_temporal_embed(
    temporal_embed: torch.Tensor,
    num_frames: int,
    mode: str = "zeros",
    seed: int = 0,
    noise_std: float = TEMPORAL_NOISE_STD,
) -> torch.Tensor:
    """[1, L, D] -> [1, num_frames, D] as the original's `_inflate_positional_embeds`
    (docs/ORIGINAL.md, 'Released checkpoint').

    L > num_frames: keep the first rows (any mode). L < num_frames: "zeros" copies the L rows into
    zeros; "nearest" (alias "interp") and "bilinear" resize the [L, D] matrix as a 1-channel image
    to [num_frames, D] with F.interpolate (align_corners at its default).

    "noise" (ours) copies the L rows and draws the new ones from N(0, noise_std^2) with a seeded generator.
    Why: the original's modes start the new rows equal (zeros; or copies of one row), and clips are as
    likely played forwards as backwards, so every equal row gets the same expected gradient and they stay
    equal: frames 1..T-1 cannot be told apart by their place in time, and the direction of a motion is
    not learned (docs/DEMO.md measures it). Distinct rows break that symmetry from the first step.
    How distinct matters too: the rows are added to patch tokens, so next to tokens of norm ~10 (a ViT
    trained from scratch) rows of norm 0.2 (std 0.02) leave frame identity a ~2 % signal that the model
    did not pick up in 1500 steps on the demo; std 0.5 did in a few hundred (docs/DEMO.md).
    """
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    if mode not in TEMPORAL_FIXES:
        raise ValueError(f"temporal_fix must be one of {TEMPORAL_FIXES}, got {mode!r}")
    L = temporal_embed.shape[1]
    if L >= num_frames:
        return temporal_embed[:, :num_frames].clone()
    if mode in ("zeros", "noise"):
        out = temporal_embed.new_zeros(1, num_frames, temporal_embed.shape[2])
        out[:, :L] = temporal_embed
        if mode == "noise":
            generator = torch.Generator().manual_seed(seed)
            out[:, L:] = noise_std * torch.randn(out[:, L:].shape, generator=generator).to(out)
        return out
    image = temporal_embed.unsqueeze(0)  # [1, 1, L, D]
    resized = F.interpolate(
        image,
        size=(num_frames, temporal_embed.shape[2]),
        mode="nearest" if mode in ("nearest", "interp") else "bilinear",
    )
    return resized.squeeze(0)


def strip_prefix(state_dict: dict, prefix: str = "module.") -> dict:
    """Remove a DataParallel/DDP prefix from every key that has it."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


@dataclasses.dataclass
class LoadReport:
    source: str
    missing: list[str]  # our tensors the file did not provide (kept at their init)
    unexpected: list[str]  # the file's tensors we have no place for (ignored)
    adapted: list[str]  # what was changed on the way in (prefix, inflation, position_ids ...)

    def __str__(self) -> str:
        def few(keys):
            return ", ".join(keys[:10]) + (f" ... (+{len(keys) - 10})" if len(keys) > 10 else "") or "none"

        return (
            f"{self.source}: missing {len(self.missing)} [{few(self.missing)}]; "
            f"unexpected {len(self.unexpected)} [{few(self.unexpected)}]; adapted: {few(self.adapted)}"
        )


def adapt_state_dict(
    state_dict: dict, model: torch.nn.Module, temporal_fix: str = "zeros", noise_std: float = TEMPORAL_NOISE_STD
) -> tuple[dict, list[str]]:
    """Make a (released or our own) state_dict fit `model`; returns (new dict, notes on what changed)."""
    notes = []
    if any(k.startswith("module.") for k in state_dict):
        state_dict, notes = strip_prefix(state_dict), ["stripped 'module.' prefix"]
    own = model.state_dict()
    # transformers versions differ on a persistent `position_ids` buffer (docs/ORIGINAL.md, 'Bugs' 13): it is an
    # arange, never trained, so take ours or drop theirs.
    for key in [k for k in own if k.endswith("embeddings.position_ids") and k not in state_dict]:
        state_dict[key] = own[key]
        notes.append(f"{key}: added from the model")
    for key in [k for k in state_dict if k.endswith("embeddings.position_ids") and k not in own]:
        del state_dict[key]
        notes.append(f"{key}: dropped (not a buffer in this transformers version)")
    key = "video_model.temporal_embed"
    if key in state_dict and key in own and state_dict[key].shape != own[key].shape:
        before = tuple(state_dict[key].shape)
        state_dict[key] = adapt_temporal_embed(state_dict[key], own[key].shape[1], temporal_fix, noise_std=noise_std)
        how = f"noise, std {noise_std:g}" if temporal_fix == "noise" else temporal_fix
        notes.append(f"{key}: {before} -> {tuple(state_dict[key].shape)} ({how})")
    key = "video_model.pos_embed"
    if key in state_dict and key in own and state_dict[key].shape != own[key].shape:
        old = int(round((state_dict[key].shape[1] - 1) ** 0.5))
        new = model.video_model.grid
        state_dict[key] = resize_pos_embed(state_dict[key], new, (old, old))
        notes.append(f"{key}: grid {old}x{old} -> {new[0]}x{new[1]} (bicubic)")
    return state_dict, notes


# ---- reading files -------------------------------------------------------------------------------


class OriginalConfigParser:
    """Inert stand-in for the original's `parse_config.ConfigParser`: holds its attributes, runs nothing."""

    @property
    def config(self) -> dict:
        return self.__dict__.get("_config", {})


# The globals a released checkpoint may name besides tensors and plain containers.
_SAFE_STANDINS = [
    (OriginalConfigParser, "parse_config.ConfigParser"),
    (pathlib.PurePosixPath, "pathlib.PosixPath"),
    (pathlib.PurePosixPath, "pathlib.PurePosixPath"),
    (pathlib.PureWindowsPath, "pathlib.WindowsPath"),
    (pathlib.PureWindowsPath, "pathlib.PureWindowsPath"),
]


WEIGHTS_ADVICE = "get the file again (download or copy it anew), or point at another checkpoint"


def read_torch_file(path: str | os.PathLike) -> dict:
    """torch.load with weights_only=True plus inert stand-ins for the original's config object.

    Any other global in the pickle (a function, a class from elsewhere) is refused with its name
    (foundation.safeload.RefusedGlobalError); an empty or damaged file raises DamagedFileError naming it.
    """
    return load_torch_file(
        path,
        tuple(_SAFE_STANDINS),
        "tensors, containers, the original's ConfigParser and pathlib paths",
        WEIGHTS_ADVICE,
    )


def read_original_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """The released format: returns (state_dict as stored, the original JSON config as a dict or {})."""
    obj = read_torch_file(path)
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise ValueError(f"{path}: not a Frozen-in-Time checkpoint (no 'state_dict' entry)")
    config = obj.get("config")
    config = config.config if isinstance(config, OriginalConfigParser) else (config or {})
    return dict(obj["state_dict"]), _plain(config)


def _plain(obj):
    """OrderedDicts and pure paths -> JSON-able dicts and strings."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return str(obj) if isinstance(obj, pathlib.PurePath) else obj


def model_config_from_original(original: dict) -> ModelConfig:
    """The ModelConfig for a released checkpoint's `arch.args` (video_params, text_params, projection)."""
    args = original.get("arch", {}).get("args", {})
    video, text = args.get("video_params", {}), args.get("text_params", {})
    if video.get("arch_config", "base_patch16_224") != "base_patch16_224":
        raise ValueError(f"original arch_config {video['arch_config']!r}: only base_patch16_224 exists")
    return ModelConfig.from_dict(
        {
            "preset": "vit-b16-224",
            "video": {"num_frames": int(video.get("num_frames", 4))},
            "text": {"model": text.get("model", "distilbert-base-uncased")},
            "projection_dim": int(args.get("projection_dim", 256)),
            "projection": args.get("projection", "minimal"),
        },
        where="original arch.args",
    )


def read_state_dict(path: str | os.PathLike) -> dict:
    """Tensors from our folder, a .safetensors file, or a torch file (released or a plain state_dict)."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        return read_safetensors(path, WEIGHTS_ADVICE)
    obj = read_torch_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return dict(obj["state_dict"])
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ValueError(f"{path}: holds neither a state_dict nor a dict with a 'state_dict' entry")


def load_same_shapes(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source, expected: str):
    """`model.load_state_dict(state_dict, strict=False)` once every tensor the model also holds has the model's
    shape; otherwise raises naming `source`, what the shapes should match (`expected`) and the first keys."""
    own = model.state_dict()
    bad = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    if bad:
        raise ValueError(f"{source}: shapes do not match {expected}: {bad[:8]}")
    return model.load_state_dict(state_dict, strict=False)


def load_weights_into(
    model: torch.nn.Module,
    path: str | os.PathLike,
    temporal_fix: str = "zeros",
    strict: bool = True,
    noise_std: float = TEMPORAL_NOISE_STD,
) -> LoadReport:
    """Load our folder / .safetensors or the released .pth.tar into `model` (a FrozenInTime).

    strict: raise (naming the keys) when a tensor is missing or unexpected, as the original's strict
    load; a learnable `logit_scale` absent from the file is allowed and keeps its init.
    """
    state_dict, notes = adapt_state_dict(read_state_dict(path), model, temporal_fix, noise_std)
    result = load_same_shapes(model, state_dict, path, "the model config")
    report = LoadReport(str(path), list(result.missing_keys), list(result.unexpected_keys), notes)
    blocking = [k for k in report.missing if k != "logit_scale"] + report.unexpected
    if strict and blocking:
        raise ValueError(
            f"weights do not fit the model ({report}); check the model config "
            f"(depth, sizes, text model) or pass strict=False"
        )
    log.info("%s", report)
    return report


# ---- our portable format -------------------------------------------------------------------------


def save_pretrained(model: torch.nn.Module, cfg: ModelConfig, out_dir: str | os.PathLike, tokenizer=None) -> Path:
    """Write `out_dir/{weights.safetensors, text_config.json, model_config.json}` (+ `tokenizer/`).

    Each file is written atomically; model_config.json goes last, so a folder with it is complete.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "producer": "frozen-pipeline"})
    atomic_write_json(out_dir / TEXT_CONFIG_FILE, model.text_model.config.to_dict())
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    atomic_write_json(out_dir / CONFIG_FILE, cfg.to_dict())
    return out_dir


def load_pretrained(model_dir: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Build a FrozenInTime from a `save_pretrained` folder, with no network access."""
    from transformers import AutoConfig

    from .frozen import FrozenInTime

    model_dir = Path(model_dir)
    if not (model_dir / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{model_dir}: no {CONFIG_FILE}; not a complete save_pretrained folder")
    advice = f"{model_dir} is damaged: export the weights again, or load the run's checkpoint folder instead"
    cfg = ModelConfig.from_dict(read_json(model_dir / CONFIG_FILE, advice), where=str(model_dir / CONFIG_FILE))
    text_dict = read_json(model_dir / TEXT_CONFIG_FILE, advice, {"model_type": str})
    try:
        text_config = AutoConfig.for_model(text_dict.pop("model_type"), **text_dict)
    except ValueError as err:
        raise DamagedFileError(model_dir / TEXT_CONFIG_FILE, f"is not a text model config ({err})", advice) from err
    model = FrozenInTime(cfg, init_weights=False, text_config=text_config)
    load_weights_into(model, model_dir)
    return model.to(map_location)
