"""LSMDC as the original's reader reads it (docs/SHARDS.md, 'LSMDC'): one row per clip of a split list.

Under `root`: `structured-symlinks/{train,val,test}_list.txt` (one clip id per line),
`structured-symlinks/raw-captions.pkl` (clip id -> list of captions, each a list of tokens; None entries are
dropped), `frame_tar_list.txt` (one path per line; its last two components without `.tar` are
`{movie}/{clip id}`) and the videos at `videos/{movie}/{clip id}.avi`. A clip has exactly one caption.
"""

from pathlib import Path
from typing import Iterator

from shard_tools.annotations import AnnotationFileError, load_pickle, read_lines
from shard_tools.rows import Row, safe_key

SPLITS = ("train", "val", "test")
_ADVICE = "--root must be the LSMDC folder holding structured-symlinks/, frame_tar_list.txt and videos/"


def _caption_text(caption) -> str | None:
    """One caption as the original joins it: tokens with spaces; a caption stored as text is kept as it is.
    None for anything else (the row then fails naming the value)."""
    if isinstance(caption, str):
        return caption
    if isinstance(caption, (list, tuple)) and all(isinstance(token, str) for token in caption):
        return " ".join(caption)
    return None


def _movie_paths(path: Path) -> dict[str, str]:
    """clip id -> `{movie}/{clip id}` from frame_tar_list.txt; the first line naming a clip wins."""
    paths: dict[str, str] = {}
    for _, line in read_lines(path, _ADVICE):
        relative = "/".join(line.split("/")[-2:]).removesuffix(".tar")
        paths.setdefault(relative.split("/")[-1], relative)
    return paths


def lsmdc_rows(root, split: str) -> Iterator[Row]:
    """Key: the clip id made WebDataset-safe (LSMDC ids hold dots, so they get the hash suffix of
    rows.safe_key); `source.id` keeps the id as it is."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    root = Path(root)
    lists = root / "structured-symlinks"
    clips = read_lines(lists / f"{split}_list.txt", _ADVICE)
    captions_path = lists / "raw-captions.pkl"
    captions = load_pickle(captions_path, _ADVICE)
    if not isinstance(captions, dict):
        raise AnnotationFileError(
            captions_path, f"holds a {type(captions).__name__}, not a dict of clip id -> captions", _ADVICE
        )
    tar_list = root / "frame_tar_list.txt"
    movie_paths = _movie_paths(tar_list)
    for line_no, clip in clips:
        where = f"{split}_list.txt line {line_no}"
        row = Row(key=safe_key(clip), captions=[], kind="video", source_id=clip, where=where)
        entries = captions.get(clip)
        if entries is None:
            row.error = ("missing_field", f"{where}: clip {clip} has no entry in {captions_path.name}")
            yield row
            continue
        if not isinstance(entries, (list, tuple)):
            row.error = ("bad_row", f"{where}: {captions_path.name} holds {entries!r:.80} for {clip}, not a list")
            yield row
            continue
        entries = [entry for entry in entries if entry is not None]
        texts = [_caption_text(entry) for entry in entries]
        if None in texts:
            bad = entries[texts.index(None)]
            row.error = ("bad_row", f"{where}: a caption of {clip} in {captions_path.name} is {bad!r:.80}")
        elif len(texts) != 1:
            row.error = (
                "missing_field" if not texts else "bad_row",
                f"{where}: clip {clip} has {len(texts)} captions in {captions_path.name}; LSMDC is read with "
                f"exactly one caption per clip, as the original reader does",
            )
        else:
            row.captions = texts
        if row.error is None:
            relative = movie_paths.get(clip)
            if relative is None:
                row.error = ("missing_field", f"{where}: clip {clip} is not in {tar_list.name}, which gives its movie")
            else:
                row.path = str(root / "videos" / f"{relative}.avi")
                row.media_ref = f"{relative}.avi"
        yield row
