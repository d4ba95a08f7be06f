"""MSVD (YouTube2Text) in its official layout (docs/SHARDS.md, 'MSVD'): one row per clip of a split.

Under `root`:
- `YouTubeClips/{clip}.avi`, the clip name being `{youtube id}_{start}_{end}` (whole seconds in the source
  video; the id may itself hold `_`, so it is split from the right);
- `youtube_mapping.txt`: `{clip} vid{N}` per line. The standard split is by N: 1-1200 train, 1201-1300 val,
  1301-1970 test (the lists collaborative-experts and CLIP4Clip ship are these same clips);
- the English captions, about 40 per clip: `AllVideoDescriptions.txt` (`{clip} {caption}` per line, `#`
  lines are comments), or else the multilingual corpus CSV Microsoft ships (`MSR Video Description
  Corpus.csv`, also found as `video_corpus.csv`: `VideoID,Start,End,...,Language,Description`), of which
  the rows with Language `English` are read.
"""

import re
from pathlib import Path
from typing import Iterator

from shard_tools.annotations import AnnotationFileError, read_lines
from shard_tools.rows import Row, safe_key
from shard_tools.tables import read_table

SPLITS = {"train": range(1, 1201), "val": range(1201, 1301), "test": range(1301, 1971)}
DESCRIPTION_TXT = "AllVideoDescriptions.txt"
CORPUS_CSVS = ("MSR Video Description Corpus.csv", "video_corpus.csv")
_ADVICE = (
    f"--root must be the MSVD folder holding YouTubeClips/, youtube_mapping.txt and {DESCRIPTION_TXT} "
    f"(or the corpus CSV, {' or '.join(CORPUS_CSVS)})"
)
_CLIP = re.compile(r"^(?P<youtube_id>.+)_(?P<start>\d+)_(?P<end>\d+)$")
_ALIAS = re.compile(r"^vid(\d+)$")


def _split_clips(mapping: Path, split: str) -> list[tuple[int, str, str]]:
    """(line number, clip, alias) of the split's clips, in the file's order. A line that is not
    `{clip} vid{N}` cannot be placed in any split, so it stops the run naming the line."""
    clips = []
    for line_no, line in read_lines(mapping, _ADVICE):
        fields = line.split()
        number = _ALIAS.match(fields[-1]) if len(fields) == 2 else None
        if number is None:
            raise AnnotationFileError(
                mapping,
                f"line {line_no} is {line[:80]!r}, not '{{clip}} vid{{N}}'",
                "fix or restore that line (the file ships with MSVD, 1970 lines)",
            )
        if int(number.group(1)) in SPLITS[split]:
            clips.append((line_no, fields[0], fields[1]))
    return clips


def _captions_from_txt(path: Path) -> dict[str, list[tuple[str, str | None]]]:
    """clip -> [(where, caption)], caption None for a line that holds a clip name and no caption."""
    captions: dict[str, list[tuple[str, str | None]]] = {}
    for line_no, line in read_lines(path, _ADVICE):
        if line.startswith("#"):
            continue
        clip, _, caption = line.partition(" ")
        captions.setdefault(clip, []).append((f"{path.name} line {line_no}", caption.strip() or None))
    return captions


def _captions_from_csv(path: Path) -> dict[str, list[tuple[str, str | None]]]:
    """clip -> [(where, caption)] from the English rows of the corpus CSV; caption None for a row that
    cannot be read or has no description. A row that names no clip stops the run naming its line."""
    captions: dict[str, list[tuple[str, str | None]]] = {}
    needed = ("VideoID", "Start", "End", "Language", "Description")
    hint = "the MSVD corpus CSV has VideoID,Start,End,WorkerID,Source,AnnotationTime,Language,Description"
    for where, rec in read_table(path, "csv", required=needed, hint=hint):
        if rec.get("Language") != "English":
            continue
        video, start, end = (rec.get(c) or "" for c in ("VideoID", "Start", "End"))
        if not (video and start.isdigit() and end.isdigit()):
            raise AnnotationFileError(
                path,
                f"{where} names no clip (VideoID {video!r}, Start {start!r}, End {end!r})",
                "fix or delete that line",
            )
        caption = None if "__error__" in rec else (rec.get("Description") or "").strip() or None
        captions.setdefault(f"{video}_{int(start)}_{int(end)}", []).append((where, caption))
    return captions


def _load_captions(root: Path) -> tuple[str, dict[str, list[tuple[str, str | None]]]]:
    if (root / DESCRIPTION_TXT).is_file():
        return DESCRIPTION_TXT, _captions_from_txt(root / DESCRIPTION_TXT)
    for name in CORPUS_CSVS:
        if (root / name).is_file():
            return name, _captions_from_csv(root / name)
    raise FileNotFoundError(f"{root / DESCRIPTION_TXT} not found: {_ADVICE}")


def msvd_rows(root, split: str) -> Iterator[Row]:
    """Key: the clip name (`{youtube id}_{start}_{end}`, already WebDataset-safe); captions: every English
    caption of the clip in file order; `extra`: youtube_id, start, end (seconds) and the vid alias. A caption
    line without a caption (or a CSV row that cannot be read) fails its clip as `bad_row`, naming the line."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    root = Path(root)
    mapping = root / "youtube_mapping.txt"
    clips = _split_clips(mapping, split)
    captions_file, captions = _load_captions(root)
    for line_no, clip, alias in clips:
        where = f"{mapping.name} line {line_no}"
        row = Row(key=safe_key(clip), captions=[], kind="video", source_id=clip, where=where, extra={"alias": alias})
        parts = _CLIP.match(clip)
        entries = captions.get(clip, [])
        unreadable = [at for at, caption in entries if caption is None]
        if parts is None:
            row.error = ("bad_row", f"{where}: clip name {clip!r} is not {{youtube id}}_{{start}}_{{end}}")
        elif not entries:
            row.error = ("missing_field", f"{where}: clip {clip} has no English caption in {captions_file}")
        elif unreadable:
            row.error = ("bad_row", f"{where}: clip {clip} has a caption line without a caption ({unreadable[0]})")
        else:
            row.captions = [caption for _, caption in entries]
            row.extra.update(youtube_id=parts["youtube_id"], start=int(parts["start"]), end=int(parts["end"]))
            row.path = str(root / "YouTubeClips" / f"{clip}.avi")
            row.media_ref = f"YouTubeClips/{clip}.avi"
        yield row
