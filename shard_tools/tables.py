"""Read tabular metadata (CSV, TSV, JSON lines, parquet) as a stream of (where, record) pairs.

Text files are decoded as UTF-8 with `surrogateescape`, so one row with bytes that are not UTF-8 does not
stop the file: the bad bytes survive as surrogates and the row fails later with `caption_not_utf8`.
A record is a dict of column -> str | None (None: the row has fewer fields than the header). Parsing is
strict: a broken table is refused up front (naming the line and the missing columns), never half-read.
"""

import csv
import json
import logging
from pathlib import Path
from typing import Iterator

csv.field_size_limit(1 << 24)
log = logging.getLogger("shard_tools")

FORMATS = ("csv", "tsv", "jsonl", "parquet")


def table_format(path: str | Path, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    name = str(path).lower()
    for suffix, fmt in (
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".jsonl", "jsonl"),
        (".json", "jsonl"),
        (".ndjson", "jsonl"),
        (".parquet", "parquet"),
    ):
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: cannot tell the table format from the name; pass --format ({', '.join(FORMATS)})")


def read_table(
    path: str | Path, fmt: str | None = None, header: list[str] | None = None, required=(), hint: str = ""
) -> Iterator[tuple[str, dict]]:
    """Yield (where, record) for every data row of `path`. `header` names the columns of a headerless
    CSV/TSV (e.g. CC-3M's official TSV); otherwise the first line is the header. `required` columns must
    exist (checked before the first row; for JSON lines, in at least one row): else ValueError naming the
    missing ones, the columns found and `hint`. A table whose syntax breaks (an unclosed quote) raises
    ValueError naming the line; a row with more values than columns gets `__error__` (it fails as
    `bad_row`) instead of losing its extra values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input table {path} does not exist")
    fmt = table_format(path, fmt)
    if fmt in ("csv", "tsv"):
        yield from _read_delimited(path, "," if fmt == "csv" else "\t", header, required, hint)
    elif fmt == "jsonl":
        yield from _read_jsonl(path, required, hint)
    elif fmt == "parquet":
        yield from _read_parquet(path, required, hint)
    else:
        raise ValueError(f"{path}: unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")


def _check_columns(path: Path, columns: list[str], required, hint: str, fmt_hint: str = "") -> None:
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise ValueError(
            f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once in the header; "
            f"rename them so each value has one place"
        )
    missing = [c for c in required if c not in columns]
    if missing:
        shown = ", ".join(repr(c) for c in columns[:20]) + (" ..." if len(columns) > 20 else "")
        raise ValueError(
            f"{path}: no column {', '.join(map(repr, missing))} (the columns are: {shown or 'none'})"
            f"{fmt_hint}{'; ' + hint if hint else ''}"
        )


def _read_delimited(path: Path, delimiter: str, header: list[str] | None, required, hint: str):
    name = "tab" if delimiter == "\t" else "comma"
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(
            f, delimiter=delimiter, strict=True, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        )
        columns = header
        spanning = 0
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise ValueError(
                    f"{path}: the row starting on line {start} cannot be parsed ({e}, on line {reader.line_num}): "
                    f"a quote is not closed, or a quote inside a value is not doubled (\"\"); fix the table "
                    f"(nothing was written)"
                ) from None
            if columns is None:
                columns = [c.strip().lstrip("\ufeff") for c in fields]
                other = next((d for d in (",", "\t", ";", "|") if d != delimiter and d in "".join(columns)), None)
                fmt_hint = (
                    f"; the header is split by {name}s: is the file separated by {other!r}? (--format tsv for tabs)"
                    if other and len(columns) == 1
                    else ""
                )
                _check_columns(path, columns, required, hint, fmt_hint)
                continue
            if not fields:  # blank line: not a row
                continue
            end = reader.line_num
            where = f"{path.name} line {start}" if end == start else f"{path.name} lines {start}-{end}"
            if end != start:
                spanning += 1
                if spanning <= 3:
                    log.warning(
                        "%s: one row (a quoted value holds line breaks); if that is not meant, a quote "
                        "is not closed on line %d",
                        where,
                        start,
                    )
            record = {c: (fields[i] if i < len(fields) else None) for i, c in enumerate(columns)}
            surplus = fields[len(columns) :]
            if any(value.strip() for value in surplus):
                record["__error__"] = (
                    f"{len(fields)} values but {len(columns)} columns (an unquoted {name} "
                    f"inside a value?); extra values: {', '.join(map(repr, surplus))[:120]}"
                )
            yield where, record
        if spanning > 3:
            log.warning("%s: %d rows span several lines (first 3 named above)", path.name, spanning)


def _read_jsonl(path: Path, required, hint: str):
    seen_required: set = set()
    objects = 0
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name} line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield where, {"__error__": f"not valid JSON ({e.msg} at column {e.colno})"}
                continue
            if not isinstance(record, dict):
                record = {"__error__": "a JSON line must be an object"}
            else:
                objects += 1
                seen_required.update(c for c in required if c in record)
            yield where, record
    missing = [c for c in required if c not in seen_required]
    if objects and missing:  # every row read before any work starts, so this still refuses up front
        raise ValueError(f"{path}: no row has the key(s) {', '.join(map(repr, missing))}{'; ' + hint if hint else ''}")


def _read_parquet(path: Path, required, hint: str):
    import pyarrow
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        columns = table.schema_arrow.names
    except (pyarrow.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    _check_columns(path, columns, required, hint)
    row_no = 0
    try:
        for batch in table.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                yield f"{path.name} row {row_no}", record
                row_no += 1
    except (pyarrow.ArrowException, OSError) as e:
        raise ValueError(f"{path}: cannot read past row {row_no} ({type(e).__name__}: {e})") from None
