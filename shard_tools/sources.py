"""The datasets make-shards knows: each function turns a dataset's own metadata layout into Rows.

Layouts (see docs/ORIGINAL.md, 'Datasets', and docs/SHARDS.md):
- WebVid: CSV `videoid,contentUrl,duration,page_dir,name`; media at `{videos_root}/{page_dir}/{videoid}.mp4`.
- CC-3M: headerless TSV `caption<TAB>url`, or a CSV with `thumbnailUrl,caption`; images named by the
  unsigned CRC32 of the URL in `{images_root}` (optionally with an extension).
- MSR-VTT: MSRVTT.zip (`annotation/MSR_VTT.json`, `high-quality/structured-symlinks/*.txt`,
  `videos/all/{id}.mp4`), split lists chosen by cut.
- csv: any table with configurable columns; the other columns pass through to the json's `extra`; optional
  time spans (start/end columns, or a list of spans per video) make every span a sample.
"""

import json
import os
import zlib
from pathlib import Path
from typing import Iterator

from shard_tools.annotations import AnnotationFileError, load_pickle
from shard_tools.rows import Row, safe_key
from shard_tools.spans import literal_list, parse_span
from shard_tools.tables import read_table

WEBVID_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")


def _missing(record: dict, columns, caption_col: str) -> list[str]:
    """Columns absent or empty; an empty caption is not 'missing' but fails later as empty_caption."""
    return [c for c in columns if record.get(c) is None or (c != caption_col and record.get(c) == "")]


def _row_problem(rec: dict, where: str, missing: list[str]) -> tuple[str, str] | None:
    """The read-time failure of a record: unparseable (`bad_row`) or lacking a needed value."""
    if "__error__" in rec:
        return ("bad_row", f"{where}: {rec['__error__']}")
    if missing:
        return ("missing_field", f"{where}: empty or missing column(s) {', '.join(missing)}")
    return None


def _pass_through(rec: dict, used) -> dict:
    """The columns a source does not use itself, for the sample json's `extra` (empty ones left out)."""
    return {c: v for c, v in rec.items() if c not in used and c != "__error__" and v not in (None, "")}


def webvid_rows(csv_path, videos_root=None) -> Iterator[Row]:
    needed = ("videoid", "name") + (("page_dir",) if videos_root else ("contentUrl",))
    hint = "the official WebVid CSV has videoid,contentUrl,duration,page_dir,name" + (
        "" if videos_root else "; without --videos-root the contentUrl column is needed for --download"
    )
    for where, rec in read_table(csv_path, "csv", required=needed, hint=hint):
        missing = _missing(rec, needed, "name")
        videoid = (rec.get("videoid") or "").strip()
        row = Row(
            key=safe_key(videoid),
            captions=[rec.get("name")],
            kind="video",
            source_id=videoid or None,
            url=rec.get("contentUrl") or None,
            where=where,
            extra=_pass_through(rec, ("videoid", "name", "contentUrl")),
        )
        row.error = _row_problem(rec, where, missing)
        if videos_root and row.error is None:
            row.path = os.path.join(str(videos_root), rec["page_dir"], f"{videoid}.mp4")
        yield row


def cc3m_image_name(url: str) -> str:
    """The file name common CC-3M downloaders give an image: unsigned CRC32 of the UTF-8 URL."""
    return str(zlib.crc32(url.encode("utf-8", "surrogateescape")) & 0xFFFFFFFF)


def _cc3m_path(images_root: str, url: str) -> str:
    base = os.path.join(images_root, cc3m_image_name(url))
    for ext in ("", ".jpg", ".jpeg", ".png", ".webp"):
        if os.path.exists(base + ext):
            return base + ext
    return base  # missing: the decoder reports missing_file with this path


def cc3m_rows(table_path, images_root=None) -> Iterator[Row]:
    """Keys are the row number (URLs repeat in CC-3M); the CRC32 name is the source id. A first line
    that ends in a URL after a tab is data (the official headerless TSV); otherwise it is a header,
    which must name `caption` and `thumbnailUrl`."""
    if not Path(table_path).is_file():
        raise FileNotFoundError(f"input table {table_path} does not exist")
    with open(table_path, "rb") as f:
        first = f.readline().rstrip(b"\r\n")
    if b"\t" in first and b"://" in first.rsplit(b"\t", 1)[1]:
        records = read_table(table_path, "tsv", header=["caption", "url"])
        url_col = "url"
    else:
        records = read_table(
            table_path,
            "tsv" if b"\t" in first else "csv",
            required=("caption", "thumbnailUrl"),
            hint="give the official headerless TSV (caption<TAB>url) or a table with a "
            "caption and a thumbnailUrl column",
        )
        url_col = "thumbnailUrl"
    for index, (where, rec) in enumerate(records):
        url = rec.get(url_col) or None
        row = Row(
            key=f"{index:09d}",
            captions=[rec.get("caption")],
            kind="image",
            url=url,
            where=where,
            source_id=cc3m_image_name(url) if url else None,
            extra=_pass_through(rec, ("caption", url_col)),
        )
        row.error = _row_problem(rec, where, _missing(rec, ("caption", url_col), "caption"))
        if row.error is None and images_root:
            row.path = _cc3m_path(str(images_root), url)
        yield row


MSRVTT_CUTS = {
    # cut: (train list, test list), under high-quality/structured-symlinks
    "jsfusion": ("train_list_jsfusion.txt", "val_list_jsfusion.txt"),
    "miech": ("train_list_miech.txt", "test_list_miech.txt"),
    "full": ("train_list_full.txt", "test_list_full.txt"),
}


def _load_caption_index(root: Path) -> dict:
    advice = "it ships in MSRVTT.zip next to annotation/ (needed for the 1k-A test captions)"
    for candidate in (
        root / "jsfusion_val_caption_idx.pkl",
        root / "high-quality" / "structured-symlinks" / "jsfusion_val_caption_idx.pkl",
    ):
        if candidate.is_file():
            index = load_pickle(candidate, advice)
            if not isinstance(index, dict):
                raise AnnotationFileError(candidate, f"holds a {type(index).__name__}, not a dict", advice)
            return {str(k): int(v) for k, v in index.items()}
    raise FileNotFoundError(f"{root}: jsfusion_val_caption_idx.pkl not found; {advice}")


def msrvtt_rows(root, split: str, cut: str = "jsfusion") -> Iterator[Row]:
    """Train rows keep every caption (about 20); test rows put the 1k-A caption first (jsfusion) and
    keep all captions, so both evaluation conventions can be run from the same shards."""
    root = Path(root)
    if cut not in MSRVTT_CUTS:
        raise ValueError(f"--cut {cut!r}: use one of {', '.join(MSRVTT_CUTS)}")
    if split not in ("train", "test"):
        raise ValueError(f"--split {split!r}: use train or test")
    list_path = root / "high-quality" / "structured-symlinks" / MSRVTT_CUTS[cut][split == "test"]
    ann_path = root / "annotation" / "MSR_VTT.json"
    for p in (list_path, ann_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: --root must be the unpacked MSRVTT.zip folder")
    with open(ann_path, encoding="utf-8") as f:
        annotations = json.load(f)["annotations"]
    captions: dict[str, list[str]] = {}
    for ann in annotations:
        captions.setdefault(str(ann["image_id"]), []).append(ann["caption"])
    cap_index = _load_caption_index(root) if (split == "test" and cut == "jsfusion") else None
    with open(list_path, encoding="utf-8") as f:
        video_ids = [line.strip() for line in f if line.strip()]
    for line_no, vid in enumerate(video_ids, 1):
        where = f"{list_path.name} line {line_no}"
        caps = captions.get(vid)
        row = Row(
            key=safe_key(vid),
            captions=list(caps or []),
            kind="video",
            source_id=vid,
            where=where,
            path=str(root / "videos" / "all" / f"{vid}.mp4"),
        )
        if not caps:
            row.error = ("missing_field", f"{where}: video {vid} has no caption in {ann_path.name}")
        elif cap_index is not None:
            if vid not in cap_index or not 0 <= cap_index[vid] < len(caps):
                row.error = ("missing_field", f"{where}: no valid 1k-A caption index for {vid}")
            else:
                i = cap_index[vid]
                row.captions = [caps[i]] + caps[:i] + caps[i + 1 :]
                row.extra["caption_index"] = i
        yield row


def _text(value):
    """A table cell as text: bytes (binary parquet columns) decoded like text files, numbers as str;
    lists and dicts are left as they are, so they fail as `bad_row` instead of becoming their repr."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "surrogateescape")
    if value is None or isinstance(value, (str, list, tuple, dict)):
        return value
    return str(value)


def table_rows(
    table_path,
    *,
    path_col=None,
    url_col=None,
    caption_col="caption",
    key_col=None,
    kind="video",
    media_root=None,
    fmt=None,
    start_col=None,
    end_col=None,
    spans_col=None,
) -> Iterator[Row]:
    """Rows from any table. Relative paths resolve against `media_root` (default: the table's folder).
    Keys: `key_col` made dot-free, else the row number. Other columns go to `extra`.

    Clips by time span (docs/SHARDS.md, 'Clips by time span'): with `start_col` and `end_col` every table
    row is one span of the video named by `key_col`, keyed `{video key}_{n}` for the video's n-th row in the
    table; with `spans_col` every table row is one video whose cell lists its spans ([start, end] pairs)
    parallel to the list in `caption_col` (Panda-70M), keyed `{video key}_{position in the list}`."""
    if not path_col and not url_col:
        raise ValueError("csv source: give --path-col or --url-col (or both)")
    if bool(start_col) != bool(end_col):
        raise ValueError("csv source: give --start-col and --end-col together (one span per row)")
    if start_col and spans_col:
        raise ValueError("csv source: give either --start-col/--end-col (one span per row) or --spans-col, not both")
    if (start_col or spans_col) and kind != "video":
        raise ValueError("csv source: spans cut clips from videos; they need --kind video")
    if start_col and not key_col:
        raise ValueError(
            "csv source: --start-col/--end-col need --key-col, the source video's id (rows of the same video "
            "are its spans, keyed {video key}_{n})"
        )
    root = Path(media_root) if media_root else Path(table_path).resolve().parent
    used = {c for c in (path_col, url_col, caption_col, key_col, start_col, end_col, spans_col) if c}
    options = {
        caption_col: "--caption-col",
        key_col: "--key-col",
        path_col: "--path-col",
        url_col: "--url-col",
        start_col: "--start-col",
        end_col: "--end-col",
        spans_col: "--spans-col",
    }
    hint = "name the columns with " + ", ".join(f"{opt} (now {col!r})" for col, opt in options.items() if col)
    spans_seen: dict[str, int] = {}  # video key -> spans so far (one-span-per-row layout)
    for index, (where, rec) in enumerate(read_table(table_path, fmt, required=sorted(used), hint=hint)):
        key_value = _text(rec.get(key_col)) if key_col else f"{index:09d}"
        row = Row(
            key=safe_key(str(key_value)) if key_value not in (None, "") else "",
            captions=[_text(rec.get(caption_col))],
            kind=kind,
            where=where,
            source_id=str(key_value) if key_col and key_value else None,
            extra={k: v for k, v in rec.items() if k not in used and k != "__error__"},
        )
        if start_col:
            _start_end_span(row, rec, start_col, end_col, spans_seen)
        if "__error__" in rec:
            row.error = ("bad_row", f"{where}: {rec['__error__']}")
        else:
            _media(row, rec, root, path_col, url_col, caption_col, key_col)
        if spans_col and row.error is None:
            yield from _span_list_rows(row, rec.get(spans_col), rec.get(caption_col), spans_col, caption_col)
        else:
            yield row


def _media(row: Row, rec: dict, root: Path, path_col, url_col, caption_col, key_col) -> None:
    """Set the row's media (path, url) from its columns, or its error when they are unusable or missing."""
    path = _text(rec.get(path_col)) if path_col else None
    url = _text(rec.get(url_col)) if url_col else None
    if not isinstance(path, (str, type(None))) or not isinstance(url, (str, type(None))):
        row.error = ("bad_row", f"{row.where}: the path or url column holds a {type(path or url).__name__}, not text")
        return
    row.path = str(root / path) if path else None
    row.media_ref = path or None
    row.url = url or None
    needed = [c for c in (caption_col, key_col) if c] + ([path_col] if path_col and not url else [])
    missing = _missing(rec, needed, caption_col)
    if not path and not url:
        missing += [c for c in (path_col, url_col) if c and c not in missing]
    if missing:
        row.error = row.error or ("missing_field", f"{row.where}: empty or missing column(s) {', '.join(missing)}")


def _start_end_span(row: Row, rec: dict, start_col: str, end_col: str, spans_seen: dict) -> None:
    """One span per table row: key `{video key}_{n}`, n counting the video's rows in table order (a row of
    the video that fails still takes its number, so the keys of the others never move)."""
    video_key = row.key
    number = spans_seen.get(video_key, 0)
    spans_seen[video_key] = number + 1
    row.video_key = video_key or None
    row.key = f"{video_key}_{number}" if video_key else ""
    start, end = _text(rec.get(start_col)), _text(rec.get(end_col))
    try:
        row.span = parse_span(start, end)
    except ValueError as e:
        row.span = (start, end)
        row.error = ("bad_span", f"{row.where}: {start_col} {start!r}, {end_col} {end!r}: {e}")


def _span_list_rows(video: Row, spans_cell, captions_cell, spans_col: str, caption_col: str) -> Iterator[Row]:
    """The rows of one video's span list (the Panda-70M layout). Lists that cannot be read, or that differ
    in length, make the table row one failed row (keyed by the video key): its span count is unknown."""
    try:
        spans = literal_list(_text(spans_cell), f"{spans_col} {str(spans_cell)[:40]!r}")
        captions = literal_list(_text(captions_cell), f"{caption_col} {str(captions_cell)[:40]!r}")
        if len(spans) != len(captions):
            raise ValueError(f"{spans_col} lists {len(spans)} spans but {caption_col} lists {len(captions)} captions")
        if not spans:
            raise ValueError(f"{spans_col} lists no span")
    except ValueError as e:
        video.error = ("bad_span", f"{video.where}: {e}")
        yield video
        return
    for number, (span, caption) in enumerate(zip(spans, captions)):
        row = Row(
            key=f"{video.key}_{number}",
            captions=[_text(caption)],
            kind=video.kind,
            path=video.path,
            url=video.url,
            source_id=video.source_id,
            extra=video.extra,
            where=f"{video.where} span {number}",
            media_ref=video.media_ref,
            video_key=video.key,
        )
        try:
            if not isinstance(span, (list, tuple)) or len(span) != 2:
                raise ValueError(f"{str(span)[:60]!r} is not a [start, end] pair")
            row.span = parse_span(*span)
        except ValueError as e:
            row.span = tuple(span) if isinstance(span, (list, tuple)) else (span,)
            row.error = ("bad_span", f"{row.where}: {e}")
        yield row
