"""Run config: one JSON file per run, validated section by section when loaded (docs/TRAINING.md).

Sections: name, seed, output_dir, model (models.ModelConfig), data (train / eval dataset lists and shared
loader options, pipeline.data.options), optim, loss, deepspeed, log, eval, checkpoint. Every error names the key
path (`optim.lr`, `data.train[1].batch_size`). `--set a.b=value` overrides are applied to the JSON before
validation, so they are checked like the file.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from foundation import schema
from foundation.fsutil import atomic_write_json
from foundation.schema import INTERNAL, ConfigError, Section
from models.config import TEMPORAL_NOISE_STD, ModelConfig, TemporalFix
from pipeline.data import shardlists
from pipeline.data.options import DatasetSpec, LoaderOptions, check_unique_names
from pipeline.train.metrics import METRIC_NAMES

EVAL_METRICS = tuple(f"{d}_{m}" for d in ("t2v", "v2t") for m in METRIC_NAMES) + ("val_loss",)
# set by the trainer from the optim / data / deepspeed sections, so not allowed in deepspeed.extra
TRAINER_DEEPSPEED_KEYS = (
    "optimizer",
    "scheduler",
    "gradient_clipping",
    "train_batch_size",
    "zero_optimization",
    "bf16",
    "fp16",
    "gradient_accumulation_steps",
    "train_micro_batch_size_per_gpu",
)


@dataclass
class OptimConfig(Section):
    total_steps: int
    lr: float = 3e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine ends at min_lr_ratio * lr
    grad_clip: float = 0.0  # max global grad norm; 0 disables (DeepSpeed's own default is 1.0)
    grad_accum_steps: int = 1  # loader steps per optimizer step

    def check(self, where: str) -> None:
        if self.total_steps < 1:
            raise ConfigError(f"{where}.total_steps: must be >= 1, got {self.total_steps}")
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr: must be > 0, got {self.lr}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{where}.betas: expected two numbers in [0, 1), got {list(self.betas)!r}")
        for key in ("warmup_steps", "grad_clip", "weight_decay", "min_lr_ratio"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key}: must be >= 0, got {getattr(self, key)}")
        if self.grad_accum_steps < 1:
            raise ConfigError(f"{where}.grad_accum_steps: must be >= 1, got {self.grad_accum_steps}")


@dataclass
class DeepSpeedSection(Section):
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    extra: dict = field(default_factory=dict)  # raw DeepSpeed keys merged last (e.g. overlap_comm)
    comm_timeout_s: float = 600.0  # a collective waiting this long on a dead rank raises

    def check(self, where: str) -> None:
        for key in TRAINER_DEEPSPEED_KEYS:
            if key in self.extra:
                raise ConfigError(
                    f"{where}.extra.{key}: set by the trainer from optim / data / deepspeed; use those sections instead"
                )


@dataclass
class LogConfig(Section):
    every_steps: int = 10
    tensorboard: bool = True

    def check(self, where: str) -> None:
        if self.every_steps < 1:
            raise ConfigError(f"{where}.every_steps: must be >= 1, got {self.every_steps}")


@dataclass
class EvalConfig(Section):
    every_steps: int = 0  # 0: only at the end
    at_start: bool = False  # the original's init_val
    best_metric: str | None = None  # "<eval dataset>/<metric>"; None: the first eval dataset's val_loss
    best_mode: Literal["max", "min"] | None = None  # None: min for val_loss / MedR / MeanR, else max
    # >0: test-time sliding window over the loaded frames (docs/ORIGINAL.md, 'Test-time evaluation')
    sliding_window_stride: int = 0
    window_frames: int = 0  # frames per window (the model's T) when sliding

    def check(self, where: str) -> None:
        if self.every_steps < 0:
            raise ConfigError(f"{where}.every_steps: must be >= 0, got {self.every_steps}")
        if self.sliding_window_stride < 0 or (self.sliding_window_stride and self.window_frames < 1):
            raise ConfigError(
                f"{where}.sliding_window_stride: needs {where}.window_frames >= 1 (the model's "
                "frames per window) and a stride >= 1"
            )


@dataclass
class CheckpointConfig(Section):
    every_steps: int = 1000
    keep_last: int = 3
    load_checkpoint: str | None = None  # model-only weights to start from (fine-tune / next stage)
    load_temporal_fix: TemporalFix = "zeros"  # how a temporal embedding with fewer rows is inflated
    load_temporal_noise_std: float = TEMPORAL_NOISE_STD  # std of the new rows with load_temporal_fix "noise"

    def check(self, where: str) -> None:
        if self.every_steps < 0 or self.keep_last < 1:
            raise ConfigError(f"{where}: every_steps must be >= 0 and keep_last >= 1")
        if self.load_temporal_noise_std < 0:
            raise ConfigError(f"{where}.load_temporal_noise_std: must be >= 0, got {self.load_temporal_noise_std}")


@dataclass
class DataSection(Section):
    train: list[DatasetSpec]
    eval: list[DatasetSpec] = field(default_factory=list)
    options: LoaderOptions = field(default_factory=LoaderOptions)

    def check(self, where: str) -> None:
        if not self.train:
            raise ConfigError(f"{where}.train: needs at least one dataset")
        check_unique_names(self.train, f"{where}.train")
        check_unique_names(self.eval, f"{where}.eval")


@dataclass
class LossSection(Section):
    weights: dict[str, float] = field(default_factory=dict)  # dataset name -> weight of its loss (default 1)


@dataclass
class RunConfig:
    """The whole run config, one field per JSON section (the root's key path is "", so errors read `optim.lr`)."""

    name: str
    output_dir: str
    model: ModelConfig
    data: DataSection
    optim: OptimConfig
    seed: int = 0
    loss: LossSection = field(default_factory=LossSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    raw: dict = field(default_factory=dict, metadata=INTERNAL)  # the validated JSON (what config.json holds)

    def check(self, where: str) -> None:
        """Rules across sections; also fills eval.best_metric / best_mode, whose defaults depend on data.eval."""
        train_names, eval_names = [s.name for s in self.data.train], [s.name for s in self.data.eval]
        for key, value in self.loss.weights.items():
            if key not in train_names:
                raise ConfigError(f"loss.weights.{key}: not a training dataset ({', '.join(train_names)})")
            if value < 0:
                raise ConfigError(f"loss.weights.{key}: expected a number >= 0, got {value!r}")
        ev = self.eval
        if ev.best_metric is not None:
            dataset, _, metric = ev.best_metric.partition("/")
            if dataset not in eval_names:
                raise ConfigError(
                    f"eval.best_metric: {ev.best_metric!r} names dataset {dataset!r}, which is "
                    f"not in data.eval ({', '.join(eval_names) or 'none'})"
                )
            if metric not in EVAL_METRICS:
                raise ConfigError(f"eval.best_metric: unknown metric {metric!r} (one of {', '.join(EVAL_METRICS)})")
        elif eval_names:
            ev.best_metric = f"{eval_names[0]}/val_loss"
        if ev.best_mode is None and ev.best_metric:
            metric = ev.best_metric.partition("/")[2]
            ev.best_mode = "min" if metric in ("val_loss",) or metric.endswith(("MedR", "MeanR")) else "max"
        if ev.sliding_window_stride:
            if ev.window_frames > self.model.video.num_frames:
                raise ConfigError(
                    f"eval.window_frames: {ev.window_frames} is more than the model takes "
                    f"(model.video.num_frames = {self.model.video.num_frames})"
                )
            for i, spec in enumerate(self.data.eval):
                if spec.num_frames % ev.window_frames:
                    raise ConfigError(
                        f"data.eval[{i}].num_frames: {spec.num_frames} is not a multiple of "
                        f"eval.window_frames = {ev.window_frames} (sliding window)"
                    )

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.raw)


def validate(raw: dict) -> RunConfig:
    """Check a whole run config; raise ConfigError naming the first bad key."""
    cfg = schema.from_dict(RunConfig, raw, "")
    cfg.raw = copy.deepcopy(raw)
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b[1].c=value` -> (["a", "b", "1", "c"], value); the value is JSON when it parses, else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.replace("]", "").replace("[", ".").split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of `raw` with each `key.path=value` set (list items by index: data.train[0].batch_size)."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node, where = raw, "config"
        for part in path[:-1]:
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {text}: {where} has no item [{part}]")
                node, where = node[int(part)], f"{where}[{part}]"
            else:
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {text}: {where} is not an object")
                node, where = node.setdefault(part, {}), f"{where}.{part}"
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"--set {text}: {where} has no item [{last}]")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {text}: {where} is not an object")
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a JSON run config, apply `--set` overrides, validate."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    try:
        return validate(apply_overrides(raw, list(overrides)))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# ---- checks before a job is submitted, and what a stage does with the temporal embedding -----------------------

TINY_ASSETS_HINT = "runs/tiny_assets"  # where configs/tiny_*.json look (pipeline.demo.tiny_assets.DEFAULT_ROOT)


def _must_be_local_folder(value: str) -> bool:
    """A text model / tokenizer value that can only be a local folder (a hub id is `name` or `org/name`)."""
    return value.startswith(("/", "./", "../", "~")) or value.count("/") > 1


def check_inputs(cfg: RunConfig, world_size: int = 1) -> list[str]:
    """Every problem with the files a run reads at start, as messages naming the key (empty: all good).

    What `launch/train.py --check` adds to the schema check, so that a job fails at submission rather than
    after its queue wait: each dataset's shards resolve (folder with manifest.json, or existing shard files),
    each training dataset has a shard for every reader (`world_size` ranks x data.options.num_workers),
    and a local text model / tokenizer folder exists. Relative paths are taken from the working directory,
    as in the job. `checkpoint.load_checkpoint` is not required to exist: in a curriculum the previous stage
    writes it.
    """
    problems = []
    for spec in list(cfg.data.train) + list(cfg.data.eval):
        try:
            shard_set = spec.resolve()
            if spec in cfg.data.train:
                shardlists.check_enough_shards(
                    len(shard_set.urls), world_size, cfg.data.options.num_workers, spec.where
                )
        except ConfigError as err:
            problems.append(str(err))
    for key, value in (
        ("model.text.model", cfg.model.text.model),
        ("data.options.tokenizer", cfg.data.options.tokenizer),
    ):
        if isinstance(value, str) and _must_be_local_folder(value) and not Path(value).expanduser().is_dir():
            problems.append(f"{key}: {value} is not a folder (relative paths are taken from {Path.cwd()})")
    if any(TINY_ASSETS_HINT in p for p in problems):
        problems.append(
            f"{TINY_ASSETS_HINT} is missing or incomplete: write it with `make tiny-assets` "
            f"(python3 -m launch.tiny_assets) in the directory you submit from"
        )
    return problems


def _checkpoint_frames(path: str) -> int | None:
    """The temporal rows of a weights folder (its model_config.json), None when unknown or not there yet."""
    try:
        doc = json.loads((Path(path) / "model_config.json").read_text())
        return int(doc["video"]["num_frames"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def trained_temporal_rows(cfg: RunConfig) -> int:
    """How many temporal-embedding rows get a gradient: rows 0..n-1, n = the most frames a training set reads."""
    return min(max(s.num_frames for s in cfg.data.train), cfg.model.video.num_frames)


def _rows(first: int, end: int) -> str:
    return f"row {first}" if end - first == 1 else f"rows {first}-{end - 1}"


def describe_temporal_rows(cfg: RunConfig) -> str:
    """Which rows of the temporal embedding this run trains, and whether its initial weights get inflated.

    The video model has model.video.num_frames rows; a clip of T frames adds row t to frame t, so a dataset
    read at T frames trains rows 0..T-1 and rows at or above the largest T get no gradient. Starting from
    weights (checkpoint.load_checkpoint), load_temporal_fix inflates the embedding only when those weights
    have FEWER rows than the model; with as many rows they are copied as they are (nothing is inflated).
    """
    rows = cfg.model.video.num_frames
    frames = {s.name: min(s.num_frames, rows) for s in cfg.data.train}
    used = trained_temporal_rows(cfg)
    reads = ", ".join(f"{name} {n}" for name, n in frames.items())
    text = f"temporal embedding: {rows} row(s) (model.video.num_frames); training reads {reads} frame(s) -> "
    if used == rows:
        text += f"all {rows} row(s) train"
    else:
        text += (
            f"{_rows(0, used)} train{'s' if used == 1 else ''}, {_rows(used, rows)} get no gradient and keep "
            f"their initial values"
        )
    init = cfg.checkpoint.load_checkpoint
    if not init:
        return text + "; starts from a fresh model (rows are zeros)"
    fix = cfg.checkpoint.load_temporal_fix
    have = _checkpoint_frames(init)
    if have is None:
        return (
            text + f"; starts from {init}: its rows are inflated to {rows} with load_temporal_fix={fix} "
            f"only if it has fewer (its row count is known when it loads)"
        )
    if have < rows:
        return text + f"; starts from {init} with {have} row(s): inflated to {rows} (load_temporal_fix={fix})"
    if have == rows:
        return (
            text + f"; starts from {init} with {rows} row(s): no inflation (load_temporal_fix unused), rows "
            f"that did not train there start from their values there (e.g. zeros after a 1-frame stage)"
        )
    return text + f"; starts from {init} with {have} row(s): the first {rows} are kept"
