"""Where a dataset's shards are, how many samples each holds, and which shards each worker reads per epoch.

A dataset is given as a make-shards output folder, its manifest.json, a brace-expanded pattern, or a list of
URLs (anything `webdataset.gopen` opens: local paths, `pipe:` commands, http(s) via curl). Sample counts
come from the manifest; a pattern picks up the manifest in the shards' folder when there is one.
"""

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import braceexpand
import numpy as np

from foundation.schema import ConfigError
from shard_tools.format import MANIFEST, ManifestError, read_manifest


@dataclass(frozen=True)
class ShardSet:
    urls: tuple[str, ...]
    counts: tuple[int, ...] | None  # samples per shard, when a manifest says so
    kind: str | None  # "video" | "image", from the manifest
    frames_per_sample: int | None  # K, from the manifest
    origin: str  # what the user gave, for messages

    @property
    def total_samples(self) -> int | None:
        return None if self.counts is None else sum(self.counts)


def _is_local(url: str) -> bool:
    return not url.startswith("pipe:") and "://" not in url


def manifest_shards(path: Path, where: str) -> ShardSet:
    """The shards a make-shards manifest lists, with their sample counts; shard paths are relative to its
    folder. ConfigError names the config key `where` and the file."""
    try:
        doc = read_manifest(path)
    except ManifestError as err:
        raise ConfigError(f"{where}: {err}") from err
    try:
        entries = [(str(s["path"]), s["samples"]) for s in doc["shards"]]
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{where}: {path}: bad 'shards' entry ({err}); each needs 'path' and 'samples'") from err
    for i, (_, n) in enumerate(entries):  # the loader checks every shard against this count
        if type(n) is not int or n < 0:
            raise ConfigError(
                f"{where}: {path}: shards[{i}].samples is {n!r}, not a sample count; rewrite the "
                f"manifest with make-shards (make-shards manifest DIR)"
            )
    if not entries:
        raise ConfigError(f"{where}: {path} lists no shards")
    urls = tuple(str(path.parent / p) for p, _ in entries)
    return ShardSet(urls, tuple(n for _, n in entries), doc.get("kind"), doc.get("frames_per_sample"), str(path))


def expand_urls(shards: str | list[str]) -> list[str]:
    """Brace-expand a pattern or each entry of a list; '::' separates several patterns as in OpenCLIP."""
    patterns = shards.split("::") if isinstance(shards, str) else list(shards)
    return [url for pattern in patterns for url in braceexpand.braceexpand(pattern)]


def resolve_shards(shards: str | list[str], where: str) -> ShardSet:
    """Turn the config's `shards` value into URLs (+ counts and kind when a manifest is found)."""
    if isinstance(shards, str) and _is_local(shards) and os.path.isdir(shards):
        manifest = Path(shards) / MANIFEST
        if not manifest.is_file():
            raise ConfigError(
                f"{where}: {shards} holds no {MANIFEST}; make-shards writes it last, once every "
                f"shard is complete: finish (or rerun) make-shards, or give a shard pattern "
                f"and num_samples"
            )
        return manifest_shards(manifest, where)
    if isinstance(shards, str) and shards.endswith(MANIFEST) and _is_local(shards):
        return manifest_shards(Path(shards), where)
    urls = expand_urls(shards)
    if not urls:
        raise ConfigError(f"{where}: the shard pattern expands to no URL")
    for url in urls:
        if _is_local(url) and not os.path.exists(url):
            raise ConfigError(f"{where}: shard {url} does not exist")
    counts = kind = frames = None
    if _is_local(urls[0]):  # a manifest beside the shards gives their sample counts
        manifest = Path(urls[0]).parent / MANIFEST
        if manifest.is_file():
            listed = manifest_shards(manifest, where)
            by_path = {os.path.realpath(u): n for u, n in zip(listed.urls, listed.counts)}
            found = [by_path.get(os.path.realpath(u)) for u in urls]
            if all(n is not None for n in found):
                counts, kind, frames = tuple(found), listed.kind, listed.frames_per_sample
    return ShardSet(tuple(urls), counts, kind, frames, shards if isinstance(shards, str) else f"{len(urls)} URLs")


def stream_id(name: str) -> int:
    """A stable number per dataset name, so two datasets with the same seed still shuffle differently."""
    return zlib.crc32(name.encode("utf-8"))


def epoch_order(num_shards: int, seed: int, name: str, epoch: int) -> np.ndarray:
    """The shard permutation for one epoch: a function of (seed, dataset, epoch) only, identical on all ranks."""
    return np.random.default_rng([seed, stream_id(name), epoch]).permutation(num_shards)


def worker_shards(order: np.ndarray, global_worker: int, total_workers: int) -> list[int]:
    """Worker g of G reads every G-th shard of the epoch order: each shard exactly once per epoch overall."""
    return [int(i) for i in order[global_worker::total_workers]]


def check_enough_shards(num_shards: int, world_size: int, num_workers: int, where: str) -> None:
    """Every reader (rank x DataLoader worker) needs at least one shard, or it would have nothing to stream."""
    readers = world_size * max(num_workers, 1)
    if num_shards < readers:
        fewer = (
            f"lower data.options.num_workers to {num_shards // world_size}"
            if num_shards >= world_size
            else "use fewer ranks"
        )
        raise ConfigError(
            f"{where}.shards: {num_shards} shards for {world_size} ranks x {max(num_workers, 1)} workers = "
            f"{readers} readers. Each reader streams whole shards, so every reader needs at least one (and "
            f"several shuffle better); a reader without shards would leave its rank without data while the "
            f"others wait on it. Write more, smaller shards (make-shards), or {fewer}."
        )
