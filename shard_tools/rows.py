"""Input rows: what every source yields and the writer consumes.

A source turns its metadata (CSV, TSV, JSON, ...) into `Row`s in a fixed order; the row's position in
that order decides its shard. A row that is already known to be unusable (missing field, non-UTF-8
caption, empty caption, duplicate key) still takes its place in the order with `error` set, so it is
counted and recorded like any other failure.
"""

import hashlib
import json
import re
from dataclasses import dataclass, field

from shard_tools.spans import parse_span

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass
class Row:
    key: str
    captions: list[str]
    kind: str = "video"  # "video" | "image"
    path: str | None = None  # local media file
    url: str | None = None  # remote media, fetched with --download
    source_id: str | None = None  # the dataset's own id (videoid, image_id, ...)
    extra: dict = field(default_factory=dict)
    error: tuple[str, str] | None = None  # (reason, detail) when the row is unusable as read
    where: str = ""  # "file.csv line 12", for error messages
    media_ref: str | None = None  # the media as the table names it (path column before the root)
    span: tuple[float, float] | None = None  # (start, end) seconds in the source video; None: the whole file
    video_key: str | None = None  # with a span: the key of its source video (spans of one video share it)

    def source(self) -> dict:
        return {"id": self.source_id, "path": self.path, "url": self.url}


def safe_key(value: str) -> str:
    """A WebDataset-safe key: no dots (the key ends at the first dot), no slashes, ASCII only.

    Surrounding whitespace is dropped. An id that needs other characters replaced by `_` also gets `-` and
    10 hex digits of its SHA-1, so different ids never share a key ('日本' -> '__-<hash>', 'a.b' and 'a_b'
    stay apart); ids made only of [A-Za-z0-9_-] are kept as they are."""
    stripped = value.strip()
    key = _UNSAFE.sub("_", stripped)
    if key == stripped:
        return key
    digest = hashlib.sha1(stripped.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{key}-{digest}"


def check_caption(text, where: str) -> tuple[str, str] | None:
    """(reason, detail) if `text` cannot serve as a caption, else None."""
    if text is None:
        return ("missing_field", f"{where}: no caption")
    if not isinstance(text, str):
        return ("bad_row", f"{where}: caption is a {type(text).__name__}, not text: {str(text)[:80]!r}")
    if any("\udc80" <= ch <= "\udcff" for ch in text):  # bytes that were not UTF-8 (surrogateescape)
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
        # Row objects from library callers may hold Paths or numbers: the stats records are JSON
        row.path, row.url, row.source_id, row.media_ref = (
            _as_text(row.path),
            _as_text(row.url),
            _as_text(row.source_id),
            _as_text(row.media_ref),
        )
        if row.error is None and row.kind not in ("video", "image"):
            row.error = ("bad_row", f"{row.where}: kind {row.kind!r} is neither video nor image")
        if row.error is None and row.span is not None:
            row.error = _span_problem(row)
        if row.error is None and not isinstance(row.captions, list):
            row.error = ("bad_row", f"{row.where}: captions must be a list of texts, got {row.captions!r:.80}")
        if row.error is None:
            for caption in row.captions or [None]:
                problem = check_caption(caption, row.where)
                if problem:
                    row.error = problem
                    break
        if row.error is None and not row.key:
            row.error = ("missing_field", f"{row.where}: empty key")
        if row.error is None and (not isinstance(row.key, str) or safe_key(row.key) != row.key):
            row.error = (
                "bad_row",
                f"{row.where}: key {row.key!r} has characters outside [A-Za-z0-9_-] "
                f"(shard_tools.rows.safe_key makes a usable one)",
            )
        if row.error is None and row.path is None and row.url is None:
            row.error = ("missing_field", f"{row.where}: neither a media path nor a url")
        if row.error is None:
            first = seen.setdefault(row.key, row.where)
            if first != row.where:
                row.error = ("duplicate_key", f"{row.where}: key {row.key!r} already used by {first}")
        yield row


def _span_problem(row: Row) -> tuple[str, str] | None:
    """(reason, detail) if a row's span is unusable; a usable one is normalised to float seconds."""
    if row.kind != "video":
        return ("bad_row", f"{row.where}: a span needs a video row, this one is {row.kind!r}")
    try:
        row.span = parse_span(*row.span)
    except (TypeError, ValueError) as e:
        return ("bad_span", f"{row.where}: span {row.span!r:.80}: {e}")
    return None


def _as_text(value):
    """Paths, URLs and ids as text (or None): they go into the JSON stats records as they are."""
    return value if value is None or isinstance(value, str) else str(value)


def row_from_record(record: dict, index: int, kind: str = "video") -> Row:
    """A Row from a plain dict (the library API): keys `key`, `path` or `url`, `caption` or `captions`,
    optional `kind`, `id`, `extra`, `span` ([start, end] in seconds or time strings), `video_key`. Unknown keys
    go to `extra`. A record that is not usable (not a dict, captions not a list, extra not a dict) gives
    a Row that fails as `bad_row`, never an exception."""
    where = f"record {index}"
    if not isinstance(record, dict):
        return Row(
            key=f"{index:09d}",
            captions=[],
            kind=kind,
            where=where,
            error=("bad_row", f"{where}: a {type(record).__name__}, not a dict: {str(record)[:80]!r}"),
        )
    known = {"key", "path", "url", "caption", "captions", "kind", "id", "extra", "span", "video_key"}
    captions = record.get("captions")
    if captions is None:
        captions = [record.get("caption")]
    elif isinstance(captions, str):
        captions = [captions]
    extra = record.get("extra") or {}
    problem = None
    if not isinstance(captions, (list, tuple)):
        problem = f"captions must be a list of texts, got {type(captions).__name__}"
        captions = []
    if not isinstance(extra, dict):
        problem, extra = f"extra must be a dict, got {type(extra).__name__}", {}
    extra = {**extra, **{k: v for k, v in record.items() if k not in known}}
    key, path, url, source_id = (record.get(k) for k in ("key", "path", "url", "id"))
    row = Row(
        key=safe_key(str(key)) if key is not None else f"{index:09d}",
        captions=list(captions),
        kind=record.get("kind", kind),
        path=_as_text(path),
        url=_as_text(url),
        source_id=_as_text(source_id),
        extra=extra,
        where=where,
        media_ref=_as_text(path),
        span=record.get("span"),
        video_key=_as_text(record.get("video_key")),
    )
    if problem:
        row.error = ("bad_row", f"{where}: {problem}")
    return row


def input_fingerprint(row: Row) -> bytes:
    """The bytes of a row that the input fingerprint (records.check_input) covers: the row as its table
    gives it (key, captions, kind, url, id, media reference, pass-through columns, read error), not the
    resolved media path, so moving the media root or restoring files for --retry-failed is no change. A span
    row adds its span and video key (whole-file rows keep the fingerprint they always had)."""
    fields = [
        row.key,
        row.captions,
        row.kind,
        row.url,
        row.source_id,
        row.media_ref,
        row.extra,
        list(row.error) if row.error else None,
    ]
    if row.span is not None:
        fields += [list(row.span), row.video_key]
    return json.dumps(fields, default=str, ensure_ascii=True).encode() + b"\n"
