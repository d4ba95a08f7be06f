"""The bookkeeping files of a shard folder: one stats record per chunk and the dataset manifest.

`{name}-{chunk:06d}.stats.json` is written (atomically) right after the chunk's tar files are renamed
into place, so it marks the chunk complete. It lists the chunk's shards, every written (row, key) and
every failed row with its reason. `manifest.json` is assembled from all stats records once every chunk
of the dataset has one: by the task that completes the last chunk, or by `make-shards manifest DIR`.
Nothing here holds timestamps, so identical runs give identical files.
"""
import json
from collections import Counter
from pathlib import Path

from pipeline.fsutil import atomic_write_json
from shard_tools import FORMAT, __version__

MANIFEST = "manifest.json"
STATS_SUFFIX = ".stats.json"


def stats_name(name: str, chunk: int) -> str:
    return f"{name}-{chunk:06d}{STATS_SUFFIX}"


def write_stats(out_dir: Path, record: dict) -> None:
    atomic_write_json(Path(out_dir) / stats_name(record["name"], record["chunk"]), record)


def read_stats(out_dir: Path, name: str, chunk: int) -> dict | None:
    path = Path(out_dir) / stats_name(name, chunk)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def chunk_is_complete(out_dir: Path, record: dict) -> bool:
    """A stats record counts only if every shard it lists is present with the recorded size."""
    for shard in record["shards"]:
        path = Path(out_dir) / shard["path"]
        if not path.is_file() or path.stat().st_size != shard["bytes"]:
            return False
    return True


class OptionsMismatch(ValueError):
    pass


def check_options(record: dict, options: dict, where: Path) -> None:
    if record.get("options") != options:
        old, new = record.get("options") or {}, options
        diffs = [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
                 if old.get(k) != new.get(k)]
        raise OptionsMismatch(f"{where} was written with other options ({'; '.join(diffs)}). "
                              f"Re-run with the same options, or write to a new --out folder.")


def collect(out_dir: Path, name: str | None = None) -> tuple[list[dict], list[int], int]:
    """(stats records found in chunk order, missing chunk numbers, number of chunks)."""
    out_dir = Path(out_dir)
    records = []
    for path in sorted(out_dir.glob(f"*{STATS_SUFFIX}")):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if name is None or record.get("name") == name:
            records.append(record)
    if not records:
        return [], [], 0
    names = {r["name"] for r in records}
    if len(names) > 1:
        raise ValueError(f"{out_dir} holds stats of several datasets ({', '.join(sorted(names))}); "
                         f"give one dataset per folder")
    num_chunks = records[0]["num_chunks"]
    by_chunk = {r["chunk"]: r for r in records}
    for r in records:
        if r["num_chunks"] != num_chunks or r["options"] != records[0]["options"]:
            raise OptionsMismatch(f"{out_dir}: {stats_name(r['name'], r['chunk'])} disagrees with "
                                  f"{stats_name(records[0]['name'], records[0]['chunk'])} on the options or "
                                  f"the number of input rows; the folder mixes two different runs")
    missing = [c for c in range(num_chunks) if c not in by_chunk]
    return [by_chunk[c] for c in sorted(by_chunk)], missing, num_chunks


def build_manifest(records: list[dict]) -> dict:
    failed = Counter()
    for r in records:
        failed.update(f["reason"] for f in r["failures"])
    shards = [s for r in records for s in r["shards"]]
    options = records[0]["options"]
    manifest = {
        "format": FORMAT,
        "name": records[0]["name"],
        "kind": options["kind"],
        "frames_per_sample": options["frames"] if options["kind"] == "video" else 1,
        "shards": shards,
        "total_samples": sum(s["samples"] for s in shards),
        "input_rows": records[0]["input_rows"],
        "failed": dict(sorted(failed.items())),
        "options": options,
        "tool_version": __version__,
        "stats": [stats_name(r["name"], r["chunk"]) for r in records],
    }
    counted = manifest["total_samples"] + sum(failed.values())
    if counted != manifest["input_rows"]:
        raise ValueError(f"stats records account for {counted} rows but the input had "
                         f"{manifest['input_rows']}; a stats file is damaged, run `make-shards verify`")
    return manifest


def finalize(out_dir: Path, name: str | None = None) -> tuple[dict | None, list[int]]:
    """Write manifest.json if every chunk is complete. Returns (manifest or None, missing chunks)."""
    out_dir = Path(out_dir)
    records, missing, _ = collect(out_dir, name)
    incomplete = [r["chunk"] for r in records if not chunk_is_complete(out_dir, r)]
    missing = sorted(missing + incomplete)
    if not records or missing:
        return None, missing
    manifest = build_manifest(records)
    atomic_write_json(out_dir / MANIFEST, manifest)
    return manifest, []


def summary_line(input_rows: int, written: int, failed: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(failed.items()))
    return (f"input rows {input_rows} = written {written} + failed {sum(failed.values())}"
            + (f" ({reasons})" if reasons else ""))
