"""Input rows: what every source yields and the writer consumes.

A source turns its metadata (CSV, TSV, JSON, ...) into `Row`s in a fixed order; the row's position in
that order decides its shard. A row that is already known to be unusable (missing field, non-UTF-8
caption, empty caption, duplicate key) still takes its place in the order with `error` set, so it is
counted and recorded like any other failure.
"""
import re
from dataclasses import dataclass, field

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass
class Row:
    key: str
    captions: list[str]
    kind: str = "video"                  # "video" | "image"
    path: str | None = None              # local media file
    url: str | None = None               # remote media, fetched with --download
    source_id: str | None = None         # the dataset's own id (videoid, image_id, ...)
    extra: dict = field(default_factory=dict)
    error: tuple[str, str] | None = None  # (reason, detail) when the row is unusable as read
    where: str = ""                      # "file.csv line 12", for error messages

    def source(self) -> dict:
        return {"id": self.source_id, "path": self.path, "url": self.url}


def safe_key(value: str) -> str:
    """A WebDataset-safe key: no dots (the key ends at the first dot), no slashes, ASCII only."""
    return _UNSAFE.sub("_", value.strip())


def check_caption(text, where: str) -> tuple[str, str] | None:
    """(reason, detail) if `text` cannot serve as a caption, else None."""
    if text is None:
        return ("missing_field", f"{where}: no caption")
    if any("\udc80" <= ch <= "\udcff" for ch in text):   # bytes that were not UTF-8 (surrogateescape)
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return ("caption_not_utf8", f"{where}: caption is not valid UTF-8: {shown[:80]!r}")
    if not text.strip():
        return ("empty_caption", f"{where}: caption is empty")
    return None


def finish_rows(rows):
    """Validate captions and keys of a row stream in order: the first usable row with a key keeps it,
    later rows with the same key fail with `duplicate_key` (naming the first). Yields the same rows."""
    seen: dict[str, str] = {}
    for row in rows:
        if row.error is None:
            for caption in row.captions or [None]:
                problem = check_caption(caption, row.where)
                if problem:
                    row.error = problem
                    break
        if row.error is None and not row.key:
            row.error = ("missing_field", f"{row.where}: empty key")
        if row.error is None and row.path is None and row.url is None:
            row.error = ("missing_field", f"{row.where}: neither a media path nor a url")
        if row.error is None:
            first = seen.setdefault(row.key, row.where)
            if first != row.where:
                row.error = ("duplicate_key", f"{row.where}: key {row.key!r} already used by {first}")
        yield row


def row_from_record(record: dict, index: int, kind: str = "video") -> Row:
    """A Row from a plain dict (the library API): keys `key`, `path` or `url`, `caption` or `captions`,
    optional `kind`, `id`, `extra`. Unknown keys go to `extra`."""
    known = {"key", "path", "url", "caption", "captions", "kind", "id", "extra"}
    captions = record.get("captions")
    if captions is None:
        captions = [record.get("caption")]
    extra = dict(record.get("extra") or {})
    extra.update({k: v for k, v in record.items() if k not in known})
    key = record.get("key")
    return Row(key=safe_key(str(key)) if key is not None else f"{index:09d}", captions=list(captions),
               kind=record.get("kind", kind), path=record.get("path"), url=record.get("url"),
               source_id=record.get("id"), extra=extra, where=f"record {index}")
