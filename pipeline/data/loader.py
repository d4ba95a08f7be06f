"""The loader's public face: the train / eval loaders the trainer iterates (their config sections, DatasetSpec
and LoaderOptions, are in pipeline.data.options).

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

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from foundation.preemption import ignore_preemption_signals
from foundation.schema import ConfigError
from pipeline.data import shardlists
from pipeline.data.options import DatasetSpec, LoaderOptions, check_unique_names
from pipeline.data.streams import Counters, DatasetReader, ReaderConfig

STATE_VERSION = 1


def _reader_config(spec: DatasetSpec, options: LoaderOptions, train: bool) -> ReaderConfig:
    return ReaderConfig(spec=spec, shards=spec.resolve(), train=train, options=options)


def _data_loader(dataset: IterableDataset, options: LoaderOptions):
    """Batches are made inside the readers, so the DataLoader only moves them (batch_size=None)."""
    if options.num_workers == 0:
        return iter(dataset)
    return iter(
        DataLoader(
            dataset,
            batch_size=None,
            num_workers=options.num_workers,
            prefetch_factor=options.prefetch_factor,
            pin_memory=options.pin_memory,
            worker_init_fn=ignore_preemption_signals,
        )
    )


def _stop_workers(batches) -> None:
    """End the worker processes of a `_data_loader` iterator now, killing any that does not stop.

    Dropping the last reference is not enough: after an exception in the data path, the traceback keeps the
    iterator alive until the interpreter exits, and then multiprocessing SIGTERMs the workers -- which ignore
    SIGTERM so that a preempted rank can save -- and joins them forever: the rank would never exit.
    """
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's DataLoader iterator (None: no workers)
    if shutdown is None:
        return
    shutdown()  # asks each worker to exit, joins with a timeout
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
        flat.update(
            {
                f"{name}/seen": c["seen"],
                f"{name}/used": c["used"],
                f"{name}/short": c["short"],
                f"{name}/skipped": sum(c["skipped"].values()),
            }
        )
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
            reader = DatasetReader(cfg, Counters.from_dict(state[cfg.spec.name]["counters"]))
            positions[cfg.spec.name] = list(state[cfg.spec.name]["position"])
            readers.append(reader)
            streams.append(reader.train_samples(reader_index, readers_total, positions[cfg.spec.name]))
        while True:
            step = {reader.cfg.spec.name: reader.make_batch(stream) for reader, stream in zip(readers, streams)}
            after = {
                r.cfg.spec.name: {"position": list(positions[r.cfg.spec.name]), "counters": r.counters.to_dict()}
                for r in readers
            }
            yield step, {"reader": logical, "state": after}


class TrainLoader:
    """Endless training steps `{dataset_name: batch}` for one rank, with exact resume.

    The state is per rank (readers differ between ranks): store each rank's `state_dict()` (or the list of
    all ranks' states, which `load_state_dict` also accepts) in the checkpoint.
    """

    def __init__(self, specs: list[DatasetSpec], options: LoaderOptions, rank: int, world_size: int):
        if not specs:
            raise ConfigError("data.train: at least one dataset is needed")
        check_unique_names(specs, "data.train")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.specs, self.options, self.rank, self.world_size = specs, options, rank, world_size
        self.configs = [_reader_config(s, options, train=True) for s in specs]
        for spec, cfg in zip(specs, self.configs):
            shardlists.check_enough_shards(len(cfg.shards.urls), world_size, options.num_workers, spec.where)
        self.readers = max(options.num_workers, 1)
        fresh = {"position": [0, 0, 0], "counters": Counters().to_dict()}
        self._steps = 0
        self._reader_states = [{s.name: copy.deepcopy(fresh) for s in specs} for _ in range(self.readers)]
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
            dataset = _TrainSteps(
                self.configs,
                self.rank,
                self.world_size,
                self.options.num_workers,
                self._steps % self.readers,
                self._reader_states,
            )
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
        return {
            "version": STATE_VERSION,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_workers": self.options.num_workers,
            "seed": self.options.seed,
            "datasets": {c.spec.name: len(c.shards.urls) for c in self.configs},
            "steps": self._steps,
            "readers": copy.deepcopy(self._reader_states),
            "wait_s": self._wait_s,
        }

    def load_state_dict(self, state: dict | list) -> None:
        """Continue from a saved state; accepts this rank's state or the list of every rank's states."""
        if isinstance(state, list):
            if len(state) != self.world_size:
                raise ValueError(f"loader state holds {len(state)} ranks, this run has {self.world_size}")
            state = state[self.rank]
        mine = self.state_dict()
        for key in ("version", "rank", "world_size", "num_workers", "seed", "datasets"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"cannot resume the loader exactly: saved {key}={state.get(key)!r}, this run "
                    f"has {mine[key]!r}. Exact resume needs the same shards, seed, ranks and "
                    f"data.options.num_workers."
                )
        self.close()
        self._steps, self._wait_s = state["steps"], state.get("wait_s", 0.0)
        self._reader_states = copy.deepcopy(state["readers"])

    def counters(self) -> dict:
        """Counts over the steps consumed so far: see `_flat_counters`."""
        per_dataset = {
            c.spec.name: _sum_counters(r[c.spec.name]["counters"] for r in self._reader_states) for c in self.configs
        }
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
        shards = range(len(self.config.shards.urls))
        if len(shards) >= readers_total:
            samples = itertools.chain.from_iterable(
                reader.read_shard(s, 0) for s in shards[reader_index::readers_total]
            )
        else:
            order = itertools.count()
            keep = lambda _ordinal: next(order) % readers_total == reader_index  # noqa: E731 (global order)
            samples = itertools.chain.from_iterable(
                reader.read_shard(s, 0, keep, count_loss=reader_index == 0) for s in shards
            )
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
        finally:  # also when the pass ends early: an exception, or the caller stops
            _stop_workers(batches)

    def counters(self) -> dict:
        """Counts of the current (or last) pass on this rank."""
        return _flat_counters({self.spec.name: _sum_counters(self._snapshots.values())}, 0, 0.0)


def build_eval_loader(spec: DatasetSpec, options: LoaderOptions, rank: int, world_size: int) -> EvalLoader:
    return EvalLoader(spec, options, rank, world_size)
