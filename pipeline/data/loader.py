"""The loader's public face: dataset specs, options, and the train / eval loaders the trainer iterates.

Train: `build_train_loader(specs, options, rank, world_size)` yields steps `{dataset_name: batch}` forever
(lock-step mixing as the original, docs/ORIGINAL.md, 'Dataset mixing': one batch of every dataset per
step). Every rank's stream is endless (epoch-wrapped), so all ranks get the same number of steps and none
waits on another that ran out.
`state_dict()` / `load_state_dict()` resume exactly (docs/LOADER.md explains how).

Eval: `build_eval_loader(spec, options, rank, world_size)` yields every sample exactly once across all ranks,
in a deterministic order, without padding.

The per-reader work (shard reading, shuffling, decoding, batching) lives in `pipeline.data.streams`.
"""
import copy
import itertools
import time
from dataclasses import dataclass, field

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.data import shardlists
from foundation.preemption import ignore_preemption_signals
from foundation.schema import ConfigError, check_keys, get_typed
from pipeline.data.streams import Counters, DatasetReader, ReaderConfig
from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD

STATE_VERSION = 1


# ---- configuration ---------------------------------------------------------------------------------------
@dataclass
class DatasetSpec:
    """One dataset of a run: where its shards are and how to batch it (config `data.train[i]` / `data.eval[i]`)."""
    name: str
    shards: str | list[str]
    kind: str | None = None          # "video" | "image"; from the manifest when absent
    num_frames: int = 1              # T frames per sample fed to the model (images: 1)
    batch_size: int = 8              # per rank, per step
    caption_mode: str = "primary"    # eval: "primary" caption, or "all" captions in batch["captions"]
    num_samples: int | None = None   # total samples; only needed when no manifest gives the counts
    where: str = "data"
    _resolved: shardlists.ShardSet | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "DatasetSpec":
        check_keys(d, where, required=["name", "shards", "batch_size"],
                   optional=["kind", "num_frames", "caption_mode", "num_samples"])
        shards = get_typed(d, "shards", (str, list), where)
        if isinstance(shards, list) and (not shards or not all(isinstance(u, str) for u in shards)):
            raise ConfigError(f"{where}.shards: expected a non-empty list of URL strings")
        spec = cls(name=get_typed(d, "name", str, where), shards=shards,
                   kind=get_typed(d, "kind", str, where, None, choices=["video", "image"]),
                   num_frames=get_typed(d, "num_frames", int, where, 1),
                   batch_size=get_typed(d, "batch_size", int, where),
                   caption_mode=get_typed(d, "caption_mode", str, where, "primary", choices=["primary", "all"]),
                   num_samples=get_typed(d, "num_samples", int, where, None), where=where)
        if not spec.name or "/" in spec.name:
            raise ConfigError(f"{where}.name: must be non-empty and contain no '/' (it names log counters)")
        for key in ("num_frames", "batch_size"):
            if getattr(spec, key) < 1:
                raise ConfigError(f"{where}.{key}: must be >= 1, got {getattr(spec, key)}")
        if spec.num_samples is not None and spec.num_samples < 1:
            raise ConfigError(f"{where}.num_samples: must be >= 1")
        return spec

    def resolve(self) -> shardlists.ShardSet:
        """Find the shards (and their counts and kind from a manifest); errors name this spec's keys."""
        if self._resolved is None:
            shard_set = shardlists.resolve_shards(self.shards, f"{self.where}.shards")
            kind = self.kind or shard_set.kind
            if kind is None:
                raise ConfigError(f"{self.where}.kind: no manifest gives the kind of {shard_set.origin}; "
                                  f"set kind to 'video' or 'image'")
            if self.kind and shard_set.kind and self.kind != shard_set.kind:
                raise ConfigError(f"{self.where}.kind: {self.kind!r}, but {shard_set.origin} holds "
                                  f"{shard_set.kind!r} samples")
            if kind == "image" and self.num_frames != 1:
                raise ConfigError(f"{self.where}.num_frames: an image dataset has 1 frame per sample, "
                                  f"got {self.num_frames}")
            if shard_set.counts is None and self.num_samples is None:
                raise ConfigError(f"{self.where}.num_samples: no manifest.json beside {shard_set.origin} gives "
                                  f"sample counts; give num_samples (the total) or point shards at the "
                                  f"make-shards folder")
            self.kind = kind
            self._resolved = shard_set
        return self._resolved

    @property
    def total_samples(self) -> int:
        return self.num_samples if self.num_samples is not None else self.resolve().total_samples


@dataclass
class LoaderOptions:
    """Options shared by all datasets (config `data.options`)."""
    num_workers: int = 4
    input_res: int = 224
    mean: tuple = IMAGENET_MEAN       # used by the trainer: normalize_video(batch["video"], mean, std)
    std: tuple = IMAGENET_STD
    crop_scale: tuple = (0.5, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    # The original's flip. Set 0 when captions name directions ("moves to the left"): a flipped clip
    # then contradicts its caption (the demo does; WebVid captions say left/right too).
    hflip_p: float = 0.5
    eval_resize: int = 256
    eval_crop: int = 256
    tokenizer: str = "distilbert-base-uncased"
    max_text_length: int = 128
    shuffle_buffer: int = 1000
    shards_per_block: int = 2
    seed: int = 0
    max_corrupt_fraction: float = 0.05
    corrupt_check_after: int = 1000
    prefetch_factor: int = 2
    pin_memory: bool = False

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "LoaderOptions":
        ints = ["num_workers", "input_res", "eval_resize", "eval_crop", "max_text_length", "shuffle_buffer",
                "shards_per_block", "seed", "corrupt_check_after", "prefetch_factor"]
        pairs = ["crop_scale", "crop_ratio"]
        triples = ["mean", "std"]
        check_keys(d, where, optional=ints + pairs + triples + ["tokenizer", "max_corrupt_fraction", "hflip_p",
                                                                     "pin_memory"])
        default = cls()
        kwargs = {k: get_typed(d, k, int, where, getattr(default, k)) for k in ints}
        for key, size in [(k, 2) for k in pairs] + [(k, 3) for k in triples]:
            value = get_typed(d, key, list, where, list(getattr(default, key)))
            if len(value) != size or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{where}.{key}: expected a list of {size} numbers, got {value!r}")
            kwargs[key] = tuple(float(v) for v in value)
        kwargs["tokenizer"] = get_typed(d, "tokenizer", str, where, default.tokenizer)
        kwargs["max_corrupt_fraction"] = float(get_typed(d, "max_corrupt_fraction", (int, float), where,
                                                         default.max_corrupt_fraction))
        kwargs["hflip_p"] = float(get_typed(d, "hflip_p", (int, float), where, default.hflip_p))
        kwargs["pin_memory"] = get_typed(d, "pin_memory", bool, where, default.pin_memory)
        options = cls(**kwargs)
        for key in ints:
            low = 0 if key in ("num_workers", "seed", "corrupt_check_after") else 1
            if kwargs[key] < low:
                raise ConfigError(f"{where}.{key}: must be >= {low}, got {kwargs[key]}")
        if not 0 <= options.hflip_p <= 1:
            raise ConfigError(f"{where}.hflip_p: must be in [0, 1], got {options.hflip_p}")
        if not 0 <= options.max_corrupt_fraction <= 1:
            raise ConfigError(f"{where}.max_corrupt_fraction: must be in [0, 1]")
        if not 0 < options.crop_scale[0] <= options.crop_scale[1] <= 1:
            raise ConfigError(f"{where}.crop_scale: need 0 < min <= max <= 1")
        if not 0 < options.crop_ratio[0] <= options.crop_ratio[1]:
            raise ConfigError(f"{where}.crop_ratio: need 0 < min <= max")
        if any(s <= 0 for s in options.std):
            raise ConfigError(f"{where}.std: every value must be > 0")
        return options


def _reader_config(spec: DatasetSpec, options: LoaderOptions, train: bool) -> ReaderConfig:
    shard_set = spec.resolve()
    return ReaderConfig(
        name=spec.name, urls=shard_set.urls, counts=shard_set.counts, kind=spec.kind, num_frames=spec.num_frames,
        batch_size=spec.batch_size, train=train, caption_mode=spec.caption_mode, res=options.input_res,
        crop_scale=options.crop_scale, crop_ratio=options.crop_ratio, hflip_p=options.hflip_p,
        eval_resize=options.eval_resize,
        eval_crop=options.eval_crop, tokenizer=options.tokenizer, max_text_length=options.max_text_length,
        seed=options.seed, shuffle_buffer=options.shuffle_buffer, shards_per_block=options.shards_per_block,
        max_corrupt_fraction=options.max_corrupt_fraction, corrupt_check_after=options.corrupt_check_after,
        frames_per_sample=shard_set.frames_per_sample)


def _data_loader(dataset: IterableDataset, options: LoaderOptions):
    """Batches are made inside the readers, so the DataLoader only moves them (batch_size=None)."""
    if options.num_workers == 0:
        return iter(dataset)
    return iter(DataLoader(dataset, batch_size=None, num_workers=options.num_workers,
                           prefetch_factor=options.prefetch_factor, pin_memory=options.pin_memory,
                           worker_init_fn=ignore_preemption_signals))


def _stop_workers(batches) -> None:
    """End the worker processes of a `_data_loader` iterator now, killing any that does not stop.

    Dropping the last reference is not enough: after an exception in the data path, the traceback keeps the
    iterator alive until the interpreter exits, and then multiprocessing SIGTERMs the workers -- which ignore
    SIGTERM so that a preempted rank can save -- and joins them forever: the rank would never exit.
    """
    shutdown = getattr(batches, "_shutdown_workers", None)     # torch's DataLoader iterator (None: no workers)
    if shutdown is None:
        return
    shutdown()                                                   # asks each worker to exit, joins with a timeout
    for worker in batches._workers:
        if worker.is_alive():
            worker.kill()
            worker.join()


def _sum_counters(snapshots) -> dict:
    total = Counters()
    for snap in snapshots:
        c = Counters.from_dict(snap)
        total.seen, total.used, total.short = total.seen + c.seen, total.used + c.used, total.short + c.short
        for reason, n in c.skipped.items():
            total.skipped[reason] = total.skipped.get(reason, 0) + n
    return total.to_dict()


def _flat_counters(per_dataset: dict, steps: int, wait_s: float) -> dict:
    """{'steps', 'wait_s', '<name>/seen', '<name>/used', '<name>/short', '<name>/skipped[/<reason>]'}: ready
    for TensorBoard."""
    flat = {"steps": steps, "wait_s": wait_s}
    for name, c in per_dataset.items():
        flat.update({f"{name}/seen": c["seen"], f"{name}/used": c["used"], f"{name}/short": c["short"],
                     f"{name}/skipped": sum(c["skipped"].values())})
        flat.update({f"{name}/skipped/{reason}": n for reason, n in sorted(c["skipped"].items())})
    return flat


# ---- training --------------------------------------------------------------------------------------------
class _TrainSteps(IterableDataset):
    """Runs in each DataLoader worker: endless steps from this worker's share of every dataset.

    DataLoader worker w plays logical reader (w + offset) % W, so that after a resume at step n the first
    step again comes from the reader that would have produced step n (the DataLoader starts at worker 0).
    """

    def __init__(self, configs, rank, world_size, num_workers, offset, reader_states):
        self.configs, self.rank, self.world_size = configs, rank, world_size
        self.workers, self.offset, self.reader_states = max(num_workers, 1), offset, reader_states

    def __iter__(self):
        info = get_worker_info()
        logical = ((info.id if info else 0) + self.offset) % self.workers
        reader_index = self.rank * self.workers + logical
        readers_total = self.world_size * self.workers
        state = copy.deepcopy(self.reader_states[logical])
        readers, streams, positions = [], [], {}
        for cfg in self.configs:
            reader = DatasetReader(cfg, Counters.from_dict(state[cfg.name]["counters"]))
            positions[cfg.name] = list(state[cfg.name]["position"])
            readers.append(reader)
            streams.append(reader.train_samples(reader_index, readers_total, positions[cfg.name]))
        while True:
            step = {reader.cfg.name: reader.make_batch(stream) for reader, stream in zip(readers, streams)}
            after = {r.cfg.name: {"position": list(positions[r.cfg.name]), "counters": r.counters.to_dict()}
                     for r in readers}
            yield step, {"reader": logical, "state": after}


class TrainLoader:
    """Endless training steps `{dataset_name: batch}` for one rank, with exact resume.

    The state is per rank (readers differ between ranks): store each rank's `state_dict()` (or the list of
    all ranks' states, which `load_state_dict` also accepts) in the checkpoint.
    """

    def __init__(self, specs: list[DatasetSpec], options: LoaderOptions, rank: int, world_size: int):
        if not specs:
            raise ConfigError("data.train: at least one dataset is needed")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.train: dataset names must be unique, got {names}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.specs, self.options, self.rank, self.world_size = specs, options, rank, world_size
        self.configs = [_reader_config(s, options, train=True) for s in specs]
        for spec, cfg in zip(specs, self.configs):
            shardlists.check_enough_shards(len(cfg.urls), world_size, options.num_workers, spec.where)
        self.readers = max(options.num_workers, 1)
        fresh = {"position": [0, 0, 0], "counters": Counters().to_dict()}
        self._steps = 0
        self._reader_states = [{name: copy.deepcopy(fresh) for name in names} for _ in range(self.readers)]
        self._wait_s = 0.0
        self._iterator = None

    # sizes the trainer may want (e.g. to express a schedule in epochs)
    @property
    def samples_per_epoch(self) -> dict[str, int]:
        return {s.name: s.total_samples for s in self.specs}

    @property
    def steps_per_epoch(self) -> int:
        """Steps for one pass over the smallest dataset across all ranks (the original's zip of loaders)."""
        return min(max(s.total_samples // (s.batch_size * self.world_size), 1) for s in self.specs)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            dataset = _TrainSteps(self.configs, self.rank, self.world_size, self.options.num_workers,
                                  self._steps % self.readers, self._reader_states)
            self._iterator = _data_loader(dataset, self.options)
        start = time.perf_counter()
        step, meta = next(self._iterator)
        self._wait_s += time.perf_counter() - start
        expected = self._steps % self.readers
        if meta["reader"] != expected:  # the round-robin order is what makes the saved state exact
            raise RuntimeError(f"step {self._steps} came from reader {meta['reader']}, expected {expected}")
        self._reader_states[meta["reader"]] = meta["state"]
        self._steps += 1
        return step

    def state_dict(self) -> dict:
        """Small, JSON-serialisable: the steps consumed and each reader's position after its last consumed step."""
        return {"version": STATE_VERSION, "rank": self.rank, "world_size": self.world_size,
                "num_workers": self.options.num_workers, "seed": self.options.seed,
                "datasets": {c.name: len(c.urls) for c in self.configs}, "steps": self._steps,
                "readers": copy.deepcopy(self._reader_states), "wait_s": self._wait_s}

    def load_state_dict(self, state: dict | list) -> None:
        """Continue from a saved state; accepts this rank's state or the list of every rank's states."""
        if isinstance(state, list):
            if len(state) != self.world_size:
                raise ValueError(f"loader state holds {len(state)} ranks, this run has {self.world_size}")
            state = state[self.rank]
        mine = self.state_dict()
        for key in ("version", "rank", "world_size", "num_workers", "seed", "datasets"):
            if state.get(key) != mine[key]:
                raise ValueError(f"cannot resume the loader exactly: saved {key}={state.get(key)!r}, this run "
                                 f"has {mine[key]!r}. Exact resume needs the same shards, seed, ranks and "
                                 f"data.options.num_workers.")
        self.close()
        self._steps, self._wait_s = state["steps"], state.get("wait_s", 0.0)
        self._reader_states = copy.deepcopy(state["readers"])

    def counters(self) -> dict:
        """Counts over the steps consumed so far: see `_flat_counters`."""
        per_dataset = {c.name: _sum_counters(r[c.name]["counters"] for r in self._reader_states)
                       for c in self.configs}
        return _flat_counters(per_dataset, self._steps, self._wait_s)

    def close(self) -> None:
        """Stop the worker processes (a later `next` starts them again from the current state)."""
        if self._iterator is not None:
            _stop_workers(self._iterator)
        self._iterator = None


def build_train_loader(specs: list[DatasetSpec], options: LoaderOptions, rank: int, world_size: int) -> TrainLoader:
    return TrainLoader(specs, options, rank, world_size)


# ---- evaluation ------------------------------------------------------------------------------------------
class _EvalBatches(IterableDataset):
    """Runs in each DataLoader worker: batches of this reader's samples, in shard order.

    With at least as many shards as readers, reader g takes shards g, g+G, ...; with fewer (a 1k-clip test set
    in one shard), every reader streams all shards and keeps samples g, g+G, ... of the global order.
    Either way each sample goes to exactly one reader and nothing is padded.
    """

    def __init__(self, config: ReaderConfig, rank: int, world_size: int, num_workers: int):
        self.config, self.rank, self.world_size, self.workers = config, rank, world_size, max(num_workers, 1)

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info else 0
        reader_index, readers_total = self.rank * self.workers + worker, self.world_size * self.workers
        reader = DatasetReader(self.config)
        shards = range(len(self.config.urls))
        if len(shards) >= readers_total:
            samples = itertools.chain.from_iterable(
                reader.read_shard(s, 0) for s in shards[reader_index::readers_total])
        else:
            order = itertools.count()
            keep = lambda _ordinal: next(order) % readers_total == reader_index  # noqa: E731 (global order)
            samples = itertools.chain.from_iterable(
                reader.read_shard(s, 0, keep, count_loss=reader_index == 0) for s in shards)
        while (batch := reader.make_batch(samples)) is not None:
            yield batch, {"reader": worker, "counters": reader.counters.to_dict()}
        # skips after the last batch (a broken last shard, a reader with no good sample) count too
        yield None, {"reader": worker, "counters": reader.counters.to_dict()}


class EvalLoader:
    """Every sample of one dataset exactly once across ranks; iterate it once per evaluation.

    Ranks may get different numbers of batches (by at most one per worker): gather results once at the end
    (e.g. `all_gather_object` of keys and embeddings), not per batch.
    """

    def __init__(self, spec: DatasetSpec, options: LoaderOptions, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.spec, self.options, self.rank, self.world_size = spec, options, rank, world_size
        self.config = _reader_config(spec, options, train=False)
        self._snapshots = {}

    @property
    def num_samples(self) -> int:
        """Samples in the whole dataset (all ranks)."""
        return self.spec.total_samples

    def __iter__(self):
        self._snapshots = {}
        dataset = _EvalBatches(self.config, self.rank, self.world_size, self.options.num_workers)
        batches = _data_loader(dataset, self.options)
        try:
            for batch, meta in batches:
                self._snapshots[meta["reader"]] = meta["counters"]
                if batch is not None:
                    yield batch
        finally:                         # also when the pass ends early: an exception, or the caller stops
            _stop_workers(batches)

    def counters(self) -> dict:
        """Counts of the current (or last) pass on this rank."""
        return _flat_counters({self.spec.name: _sum_counters(self._snapshots.values())}, 0, 0.0)


def build_eval_loader(spec: DatasetSpec, options: LoaderOptions, rank: int, world_size: int) -> EvalLoader:
    return EvalLoader(spec, options, rank, world_size)
