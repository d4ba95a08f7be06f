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

from foundation.fsutil import atomic_write_json
from shard_tools import __version__
from shard_tools.format import FORMAT, write_manifest

STATS_SUFFIX = ".stats.json"


SHARD_FIELDS = {"path": str, "samples": int, "bytes": int}
# fmt: off
STATS_FIELDS = {"format": str, "name": str, "chunk": int, "num_chunks": int, "input_rows": int, "rows": list,
                "options": dict, "shards": list, "samples": list, "failures": list}
# fmt: on


def json_is(value, types) -> bool:
    """isinstance that does not take True/False for numbers (json's true is not a frame count)."""
    if isinstance(value, bool):
        return bool in (types if isinstance(types, tuple) else (types,))
    return isinstance(value, types)


def _type_name(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def shape_problems(obj, fields: dict, where: str, optional: dict | None = None) -> list[str]:
    """Problems of a JSON object against {field: type} (and optional {field: type}, checked where
    present): not an object, missing fields, wrong types."""
    if not isinstance(obj, dict):
        return [f"{where}: holds {json.dumps(obj)[:60]}, expected a JSON object"]
    missing = [k for k in fields if k not in obj]
    problems = [f"{where}: lacks {', '.join(missing)}"] if missing else []
    for k, types in {**fields, **(optional or {})}.items():
        if k in obj and not json_is(obj[k], types):
            problems.append(f"{where}: {k} is {json.dumps(obj[k])[:60]}, expected {_type_name(types)}")
    return problems


def stats_name(name: str, chunk: int) -> str:
    return f"{name}-{chunk:06d}{STATS_SUFFIX}"


def write_stats(out_dir: Path, record: dict) -> None:
    atomic_write_json(Path(out_dir) / stats_name(record["name"], record["chunk"]), record)


def read_stats(out_dir: Path, name: str, chunk: int) -> dict | None:
    path = Path(out_dir) / stats_name(name, chunk)
    if not path.is_file():
        return None
    return _load(path)


def _load(path: Path) -> dict:
    """A stats record; a damaged one (not JSON, e.g. hand-edited or from a disk that failed) is named."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} is damaged ({e}); delete it and re-run the same command (its chunk is written again)"
        ) from None
    problems = shape_problems(record, STATS_FIELDS, path.name)
    if not problems:
        problems = [
            p
            for i, s in enumerate(record["shards"])
            for p in shape_problems(s, SHARD_FIELDS, f"{path.name} shards[{i}]")
        ]
        problems += [
            f"{path.name} failures[{i}]: not an object with a reason"
            for i, f in enumerate(record["failures"])
            if not (isinstance(f, dict) and isinstance(f.get("reason"), str))
        ]
    if problems:
        raise ValueError(
            f"{path} is damaged ({'; '.join(problems[:3])}); delete it and re-run the same command "
            f"(its chunk is written again)"
        )
    return record


def chunk_is_complete(out_dir: Path, record: dict) -> bool:
    """A stats record counts only if every shard it lists is present with the recorded size."""
    for shard in record["shards"]:
        path = Path(out_dir) / shard["path"]
        if not path.is_file() or path.stat().st_size != shard["bytes"]:
            return False
    return True


class OptionsMismatch(ValueError):
    pass


class InputChanged(ValueError):
    """The input rows differ from those the folder was made from (a shorter, longer or edited table)."""


class LocalWriteError(Exception):
    """Writing into the output folder failed (disk full, quota, file size limit, read-only, I/O error).
    Not any input row's fault, so it stops the run instead of failing rows: finished chunks are kept,
    and the same command completes the job once the cause is fixed."""

    def __init__(self, path, error: OSError):
        self.path, self.error = str(path), error
        super().__init__(f"cannot write {path}: {error.strerror or error}")


def check_options(record: dict, options: dict, where: Path) -> None:
    if record.get("options") != options:
        old, new = record.get("options") or {}, options
        diffs = [
            f"{k}: {old.get(k)!r} there, {new.get(k)!r} now"
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
        ]
        raise OptionsMismatch(
            f"{where} was written with other options ({'; '.join(diffs)}). "
            f"Re-run with the same options, or write to a new --out folder."
        )


def check_input(out_dir: Path, name: str, rows: int, sha256: str, chunk_sha256: list[str]) -> None:
    """Refuse to continue a folder made from other input rows: a shorter table would leave the old rows'
    shards in the manifest, a longer or edited one would mix two tables. Every stats record of the
    dataset carries the row count and fingerprint of the input it was made from (rows.input_fingerprint)."""
    old_rows, changed = set(), []
    for path in sorted(Path(out_dir).glob(f"{name}-*{STATS_SUFFIX}")):
        record = _load(path)
        if record.get("name") != name:
            continue
        same_rows = record.get("input_rows") == rows
        if same_rows and record.get("input_sha256") in (None, sha256):  # None: written before fingerprints
            continue
        old_rows.add(record.get("input_rows"))
        chunk = record.get("chunk", -1)
        if not 0 <= chunk < len(chunk_sha256):
            changed.append(f"{chunk} (rows {record['rows'][0]}-{record['rows'][1] - 1}: not in the input now)")
        elif record.get("chunk_input_sha256") not in (None, chunk_sha256[chunk]):
            changed.append(f"{chunk} (rows {record['rows'][0]}-{record['rows'][1] - 1}: edited)")
    if not old_rows:
        return
    counts = (
        f"it was made from {', '.join(map(str, sorted(old_rows)))} input rows, the input now has {rows}"
        if old_rows != {rows}
        else f"it was made from {rows} other input rows (same count, other content)"
    )
    shown = "; ".join(changed[:10]) + (f" ... ({len(changed)} chunks in all)" if len(changed) > 10 else "")
    grown = f"; rows {max(old_rows)}-{rows - 1} are new" if rows > max(old_rows) else ""
    raise InputChanged(
        f"{out_dir}: the input table changed since this folder was written: {counts}"
        + (f"; chunks that differ: {shown}" if shown else "")
        + grown
        + ". Shards of two different tables cannot be mixed: restore the original table to "
        "finish this folder, or write to a new --out folder (or delete this one) to start over."
    )


def collect(out_dir: Path, name: str | None = None) -> tuple[list[dict], list[int], int]:
    """(stats records found in chunk order, missing chunk numbers, number of chunks)."""
    out_dir = Path(out_dir)
    records = []
    for path in sorted(out_dir.glob(f"*{STATS_SUFFIX}")):
        record = _load(path)
        if name is None or record.get("name") == name:
            records.append(record)
    if not records:
        return [], [], 0
    names = {r["name"] for r in records}
    if len(names) > 1:
        raise ValueError(
            f"{out_dir} holds stats of several datasets ({', '.join(sorted(names))}); give one dataset per folder"
        )
    num_chunks = records[0]["num_chunks"]
    by_chunk = {r["chunk"]: r for r in records}
    for r in records:
        fingerprints = {r.get("input_sha256"), records[0].get("input_sha256")} - {None}  # None: older record
        if r["num_chunks"] != num_chunks or r["options"] != records[0]["options"] or len(fingerprints) > 1:
            raise OptionsMismatch(
                f"{out_dir}: {stats_name(r['name'], r['chunk'])} disagrees with "
                f"{stats_name(records[0]['name'], records[0]['chunk'])} on the options or "
                f"the number of input rows; the folder mixes two different runs"
            )
    missing = [c for c in range(num_chunks) if c not in by_chunk]
    return [by_chunk[c] for c in sorted(by_chunk)], missing, num_chunks


def build_manifest(records: list[dict]) -> dict:
    failed = Counter()
    for r in records:
        failed.update(f["reason"] for f in r["failures"])
    # member checksums stay in the stats records (verify reads them there): a manifest with them would
    # grow by ~300 bytes per sample, and every loader reads the manifest
    shards = [{k: v for k, v in s.items() if k != "crc32"} for r in records for s in r["shards"]]
    options = records[0]["options"]
    manifest = {
        "format": FORMAT,
        "name": records[0]["name"],
        "kind": options["kind"],
        "frames_per_sample": options["frames"] if options["kind"] == "video" else 1,
        "shards": shards,
        "total_samples": sum(s["samples"] for s in shards),
        "input_rows": records[0]["input_rows"],
        "input_sha256": next((r["input_sha256"] for r in records if r.get("input_sha256")), None),
        "failed": dict(sorted(failed.items())),
        "options": options,
        "tool_version": __version__,
        "stats": [stats_name(r["name"], r["chunk"]) for r in records],
    }
    counted = manifest["total_samples"] + sum(failed.values())
    if counted != manifest["input_rows"]:
        raise ValueError(
            f"stats records account for {counted} rows but the input had "
            f"{manifest['input_rows']}; a stats file is damaged, run `make-shards verify`"
        )
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
    write_manifest(out_dir, manifest)
    return manifest, []


def summary_line(input_rows: int, written: int, failed: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(failed.items()))
    return f"input rows {input_rows} = written {written} + failed {sum(failed.values())}" + (
        f" ({reasons})" if reasons else ""
    )
