"""Reading files a user can point a command at: never running code from them, and saying what is wrong.

Every torch file goes through `load_torch_file`: torch's weights_only unpickler, which builds tensors and
plain containers only, plus the exact globals the caller allows (DeepSpeed's three, the original's
ConfigParser stand-in). DeepSpeed reads its own checkpoint files with `torch.load(weights_only=False)`;
`restricted_torch_load()` routes those calls through the same loader while DeepSpeed runs.

A file that cannot be read raises `DamagedFileError` (a ValueError) naming the file, what is wrong with it
(empty, truncated, not a torch/JSON/safetensors file, wrong JSON type) and what to do; a pickle naming a
global outside the allowed set raises `RefusedGlobalError` naming that global. Both keep torch's own message
as the cause.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file

_TORCH_LOAD = torch.load  # the real one, also while restricted_torch_load() has replaced torch.load


class DamagedFileError(ValueError):
    """A file that is empty, cut short, or not what it should be."""

    def __init__(self, path: str | os.PathLike, problem: str, advice: str = ""):
        self.path, self.problem, self.advice = Path(path), problem, advice
        super().__init__(f"{path}: {problem}" + (f"; {advice}" if advice else ""))


class RefusedGlobalError(DamagedFileError):
    """A pickle that names a function or class outside the allowed set (it could run code)."""

    def __init__(self, path: str | os.PathLike, global_name: str, allowed: str, advice: str = ""):
        self.global_name = global_name
        super().__init__(
            path,
            f"refused to unpickle: the file names the global {global_name}, which is outside "
            f"the allowed set ({allowed}); a checkpoint never needs it, so the file may be "
            f"crafted to run code. Do not load it with weights_only=False unless you trust "
            f"where it came from",
            advice,
        )


def _unpickler_detail(err: BaseException) -> str:
    """The line of torch's message that says what it met (a weights_only failure starts with boilerplate)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        match = re.search(r"WeightsUnpickler error: (.*)", line)
        if match:
            return match.group(1).strip()
    if lines and lines[0].startswith("Weights only load failed"):
        lines = [line for line in lines[1:] if not line.startswith(("Check the documentation", "(1)", "(2)"))]
    return lines[0] if lines else type(err).__name__


def _refused_global(detail: str) -> str | None:
    """The global a weights_only refusal names, or None when the error is about damaged bytes."""
    match = re.search(r"GLOBAL (\S+?)(?: was not| whose|\.?$)", detail)
    if match:
        return match.group(1)
    match = re.search(r"(?:Can only build|Can only create new object).* got (?:<class ')?([\w.]+)", detail)
    return match.group(1) if match else None


def _check_size(path: Path, advice: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing" + (f"; {advice}" if advice else ""))
    if path.stat().st_size == 0:
        raise DamagedFileError(path, "is empty (0 bytes): it was cut off while being written or copied", advice)


def load_torch_file(
    path,
    allowed: tuple = (),
    allowed_text: str = "tensors and containers",
    advice: str = "",
    zip_only: bool = False,
    map_location="cpu",
    **load_kwargs,
):
    """torch.load(path, weights_only=True) with `allowed` extra globals; errors name the file.

    path: a file path (checked for being empty / not a zip first) or an open binary file.
    allowed: classes, or (class, "module.Name") pairs mapping a pickled name to a stand-in
    (torch.serialization.safe_globals). allowed_text names the allowed set in a refusal.
    zip_only: the file must be torch's zip format (every file torch >= 1.6 and DeepSpeed write), so a
    truncated or foreign file is reported as such before unpickling; the released .pth.tar may be older.
    """
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
        _check_size(path, advice)
        if zip_only and not zipfile.is_zipfile(path):
            raise DamagedFileError(
                path,
                f"is truncated or not a torch checkpoint ({path.stat().st_size} bytes, no complete zip archive in it)",
                advice,
            )
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return _TORCH_LOAD(path, map_location=map_location, weights_only=True, **load_kwargs)
    except Exception as err:  # any failure to decode the file is a fact about the file: say which
        detail = _unpickler_detail(err)
        name = _refused_global(detail) if "Weights only load failed" in str(err) else None
        if name:
            raise RefusedGlobalError(path, name, allowed_text, advice) from err
        raise DamagedFileError(
            path, f"is damaged or not a torch checkpoint ({type(err).__name__}: {detail})", advice
        ) from err


@contextlib.contextmanager
def restricted_torch_load(allowed: tuple, allowed_text: str, advice: str = "") -> Iterator[None]:
    """While the block runs, every torch.load (DeepSpeed's included, whatever weights_only it asks for) goes
    through load_torch_file with `allowed`. DeepSpeed calls `torch.load(...)` through the torch module at
    call time (engine.load_checkpoint, zero_to_fp32, universal checkpoints), so replacing the attribute
    reaches all of them; nothing else runs torch.load in this process meanwhile (the loader's workers are
    other processes)."""

    def restricted(f, map_location=None, pickle_module=None, *, weights_only=None, **kwargs):
        # the caller's weights_only=False and pickle_module are what this guard exists to override
        return load_torch_file(f, allowed, allowed_text, advice, zip_only=True, map_location=map_location, **kwargs)

    torch.load = restricted
    try:
        yield
    finally:
        torch.load = _TORCH_LOAD


def read_json(path: str | os.PathLike, advice: str = "", fields: dict | None = None):
    """A JSON object from `path`; `fields` {key: type or tuple of types} must be present with those types."""
    path = Path(path)
    _check_size(path, advice)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DamagedFileError(path, f"is not UTF-8 text (byte {err.start}): damaged or not JSON", advice) from err
    except json.JSONDecodeError as err:
        raise DamagedFileError(
            path, f"is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): truncated or damaged", advice
        ) from err
    if not isinstance(obj, dict):
        raise DamagedFileError(path, f"holds a JSON {type(obj).__name__}, expected an object", advice)
    for key, kind in (fields or {}).items():
        if key not in obj:
            raise DamagedFileError(path, f"has no {key!r} entry", advice)
        if not isinstance(obj[key], kind) or (kind is int and isinstance(obj[key], bool)):
            want = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise DamagedFileError(path, f"{key!r} is a {type(obj[key]).__name__}, expected {want}", advice)
    return obj


def read_safetensors(path: str | os.PathLike, advice: str = "") -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file (a format with no code in it), errors naming the file."""
    path = Path(path)
    _check_size(path, advice)
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # SafetensorError and friends: the header or the data is cut short
        raise DamagedFileError(
            path,
            f"is damaged or not a safetensors file ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''})",
            advice,
        ) from err
