"""MSVD (YouTube2Text) in its official layout (docs/SHARDS.md, 'MSVD'): one row per clip of a split.

Under `root`:
- `YouTubeClips/{clip}.avi`, the clip name being `{youtube id}_{start}_{end}` (whole seconds in the source
  video; the id may itself hold `_`, so it is split from the right);
- `youtube_mapping.txt`: `{clip} vid{N}` per line. The standard split is by N: 1-1200 train, 1201-1300 val,
  1301-1970 test (collaborative-experts' val_list.txt starts at vid1201);
- the English captions, about 40 per clip: `AllVideoDescriptions.txt` (`{clip} {caption}` per line, `#`
  lines are comments), or else the multilingual corpus CSV Microsoft ships (`MSR Video Description
  Corpus.csv`, also found as `video_corpus.csv`: `VideoID,Start,End,...,Language,Description`), of which
  the rows with Language `English` are read.
The retrieval papers' packaging (collaborative-experts' tarball, CLIP4Clip's msvd_data.zip) is read too:
without `youtube_mapping.txt`, the split is `{split}_list.txt` (one clip per line); without a caption file
above, the captions are `raw-captions.pkl` (clip -> list of token lists, loaded by the restricted unpickler).
"""

import re
from pathlib import Path
from typing import Iterator

from shard_tools.annotations import AnnotationFileError, load_pickle, read_lines
from shard_tools.rows import Row, safe_key
from shard_tools.tables import read_table

SPLITS = {"train": range(1, 1201), "val": range(1201, 1301), "test": range(1301, 1971)}
DESCRIPTION_TXT = "AllVideoDescriptions.txt"
CORPUS_CSVS = ("MSR Video Description Corpus.csv", "video_corpus.csv")
CAPTION_PICKLE = "raw-captions.pkl"
_ADVICE = (
    f"--root must be the MSVD folder holding YouTubeClips/, youtube_mapping.txt (or {{split}}_list.txt) and "
    f"{DESCRIPTION_TXT} (or the corpus CSV, {' or '.join(CORPUS_CSVS)}, or {CAPTION_PICKLE})"
)
_CLIP = re.compile(r"^(?P<youtube_id>.+)_(?P<start>\d+)_(?P<end>\d+)$")
_ALIAS = re.compile(r"^vid(\d+)$")


def _split_clips(root: Path, split: str) -> list[tuple[str, str, str | None]]:
    """(where, clip, vid alias or None) of the split's clips, in file order: from youtube_mapping.txt,
    else from `{split}_list.txt`. A mapping line that is not `{clip} vid{N}` cannot be placed in any split,
    so it stops the run naming the line."""
    mapping = root / "youtube_mapping.txt"
    if not mapping.is_file() and (root / f"{split}_list.txt").is_file():
        lines = read_lines(root / f"{split}_list.txt", _ADVICE)
        return [(f"{split}_list.txt line {line_no}", clip, None) for line_no, clip in lines]
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
            clips.append((f"{mapping.name} line {line_no}", fields[0], fields[1]))
    return clips


# clip -> [(caption, None) or (None, why a caption line of the clip holds no caption)]
Captions = dict[str, list[tuple[str | None, str | None]]]


def _captions_from_txt(path: Path) -> Captions:
    captions: Captions = {}
    for line_no, line in read_lines(path, _ADVICE):
        if line.startswith("#"):
            continue
        clip, _, caption = line.partition(" ")
        caption = caption.strip()
        problem = None if caption else f"{path.name} line {line_no} holds no caption"
        captions.setdefault(clip, []).append((caption or None, problem))
    return captions


def _captions_from_csv(path: Path) -> Captions:
    """The English rows of the corpus CSV. A row that names no clip stops the run naming its line."""
    captions: Captions = {}
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
        caption = (rec.get("Description") or "").strip()
        if "__error__" in rec:
            entry = (None, f"{where}: {rec['__error__']}")
        else:
            entry = (caption, None) if caption else (None, f"{where} has no Description")
        captions.setdefault(f"{video}_{int(start)}_{int(end)}", []).append(entry)
    return captions


def _captions_from_pickle(path: Path) -> Captions:
    """raw-captions.pkl: clip -> list of captions, each a list of tokens (joined with spaces) or a text."""
    loaded = load_pickle(path, _ADVICE)
    if not isinstance(loaded, dict):
        raise AnnotationFileError(path, f"holds a {type(loaded).__name__}, not a dict of clip -> captions", _ADVICE)
    captions: Captions = {}
    for clip, entries in loaded.items():
        for entry in entries if isinstance(entries, (list, tuple)) else [entries]:
            if isinstance(entry, (list, tuple)) and all(isinstance(token, str) for token in entry):
                entry = " ".join(entry)
            if isinstance(entry, str) and entry.strip():
                captions.setdefault(str(clip), []).append((entry.strip(), None))
            else:
                problem = f"{path.name} holds {entry!r:.60} as a caption of {clip}"
                captions.setdefault(str(clip), []).append((None, problem))
    return captions


def _load_captions(root: Path) -> tuple[str, Captions]:
    if (root / DESCRIPTION_TXT).is_file():
        return DESCRIPTION_TXT, _captions_from_txt(root / DESCRIPTION_TXT)
    for name in CORPUS_CSVS:
        if (root / name).is_file():
            return name, _captions_from_csv(root / name)
    if (root / CAPTION_PICKLE).is_file():
        return CAPTION_PICKLE, _captions_from_pickle(root / CAPTION_PICKLE)
    raise FileNotFoundError(f"{root / DESCRIPTION_TXT} not found: {_ADVICE}")


def msvd_rows(root, split: str) -> Iterator[Row]:
    """Key: the clip name (`{youtube id}_{start}_{end}`, already WebDataset-safe); captions: every English
    caption of the clip in file order; `extra`: youtube_id, start, end (seconds) and the vid alias (with
    youtube_mapping.txt). A caption
    line of the clip without a caption (or a CSV row that cannot be read) is left out of `captions` and named
    in `extra.dropped_captions`; a clip left with no caption fails as `missing_field`."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    root = Path(root)
    clips = _split_clips(root, split)
    captions_file, captions = _load_captions(root)
    for where, clip, alias in clips:
        extra = {"alias": alias} if alias else {}
        row = Row(key=safe_key(clip), captions=[], kind="video", source_id=clip, where=where, extra=extra)
        parts = _CLIP.match(clip)
        entries = captions.get(clip, [])
        texts = [caption for caption, _ in entries if caption]
        dropped = [problem for _, problem in entries if problem]
        if dropped:
            row.extra["dropped_captions"] = dropped
        if parts is None:
            row.error = ("bad_row", f"{where}: clip name {clip!r} is not {{youtube id}}_{{start}}_{{end}}")
        elif not texts:
            also = f" ({len(dropped)} line(s) without one: {dropped[0]})" if dropped else ""
            row.error = ("missing_field", f"{where}: clip {clip} has no English caption in {captions_file}{also}")
        else:
            row.captions = texts
            row.extra.update(youtube_id=parts["youtube_id"], start=int(parts["start"]), end=int(parts["end"]))
            row.path = str(root / "YouTubeClips" / f"{clip}.avi")
            row.media_ref = f"YouTubeClips/{clip}.avi"
        yield row
