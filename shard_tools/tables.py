"""Read tabular metadata (CSV, TSV, JSON lines, parquet) as a stream of (where, record) pairs.

Text files are decoded as UTF-8 with `surrogateescape`, so one row with bytes that are not UTF-8 does not
stop the file: the bad bytes survive as surrogates and the row fails later with `caption_not_utf8`.
A record is a dict of column -> str | None (None: the row has fewer fields than the header).
"""
import csv
import json
from pathlib import Path
from typing import Iterator

csv.field_size_limit(1 << 24)

FORMATS = ("csv", "tsv", "jsonl", "parquet")


def table_format(path: str | Path, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    name = str(path).lower()
    for suffix, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".jsonl", "jsonl"), (".json", "jsonl"),
                        (".ndjson", "jsonl"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: cannot tell the table format from the name; pass --format "
                     f"({', '.join(FORMATS)})")


def read_table(path: str | Path, fmt: str | None = None, header: list[str] | None = None
               ) -> Iterator[tuple[str, dict]]:
    """Yield (where, record) for every data row of `path`. `header` names the columns of a headerless
    CSV/TSV (e.g. CC-3M's official TSV); otherwise the first line is the header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input table {path} does not exist")
    fmt = table_format(path, fmt)
    if fmt in ("csv", "tsv"):
        yield from _read_delimited(path, "," if fmt == "csv" else "\t", header)
    elif fmt == "jsonl":
        yield from _read_jsonl(path)
    elif fmt == "parquet":
        yield from _read_parquet(path)
    else:
        raise ValueError(f"{path}: unknown table format {fmt!r}; use one of {', '.join(FORMATS)}")


def _read_delimited(path: Path, delimiter: str, header: list[str] | None):
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        columns = header
        for fields in reader:
            if columns is None:
                columns = [c.strip().lstrip("\ufeff") for c in fields]
                continue
            if not fields:          # blank line: not a row
                continue
            record = {c: (fields[i] if i < len(fields) else None) for i, c in enumerate(columns)}
            yield f"{path.name} line {reader.line_num}", record


def _read_jsonl(path: Path):
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
            yield where, record


def _read_parquet(path: Path):
    import pyarrow.parquet as pq
    table = pq.ParquetFile(path)
    row_no = 0
    for batch in table.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            yield f"{path.name} row {row_no}", record
            row_no += 1
