"""DiDeMo for paragraph-to-video retrieval (docs/SHARDS.md, 'DiDeMo'): one row per video of a split.

Under `root`: `{train,val,test}_data.json` as LocalizingMoments ships them (a list of moments, each
`{"annotation_id", "description", "video", "times": [[start chunk, end chunk], ...], "dl_link",
"num_segments"}`; chunks are 5 s, a pair (s, e) covers s*5 s to (e+1)*5 s) and the videos in `videos/`,
named as `video` gives them (`{user}_{photo id}_{secret}.{ext}`, the Flickr download) or with `.mp4` added
(`{video}.mp4`, the AWS download). The whole video is the target; its caption is one paragraph.
An optional `{split}_list.txt` (collaborative-experts' split lists, which CLIP4Clip also reads: one `video`
name per line) chooses the split's videos: 1,004 test videos instead of the JSON's 1,037.
"""

import dataclasses
from pathlib import Path
from typing import Iterator

from shard_tools.annotations import AnnotationFileError, load_json, read_lines
from shard_tools.rows import Row, safe_key

SPLITS = ("train", "val", "test")
CHUNK_SECONDS = 5
_ADVICE = "--root must be the DiDeMo folder holding {train,val,test}_data.json (LocalizingMoments' data/) and videos/"


def _times_problem(times) -> str | None:
    if not isinstance(times, list) or not times:
        return f"times is {times!r:.60}, not a list of [start chunk, end chunk] pairs"
    for pair in times:
        ok = isinstance(pair, list) and len(pair) == 2 and all(type(c) is int for c in pair)
        if not ok or not 0 <= pair[0] <= pair[1]:
            return f"times holds {pair!r:.60}, not a [start chunk, end chunk] pair with 0 <= start <= end"
    return None


def _moment(entry: dict) -> tuple[dict | None, str | None]:
    """(the moment for `extra`, None) or (None, what is wrong with the entry)."""
    description = entry.get("description")
    if not isinstance(description, str) or not description.strip():
        return None, f"description is {description!r:.60}, not a text"
    problem = _times_problem(entry.get("times"))
    if problem:
        return None, problem
    times = entry["times"]
    return {
        "annotation_id": entry.get("annotation_id"),
        "description": description.strip(),
        "times": times,
        "seconds": [[s * CHUNK_SECONDS, (e + 1) * CHUNK_SECONDS] for s, e in times],
    }, None


def _video_path(videos: Path, video: str) -> Path:
    """The file as Flickr names it, else with the AWS downloader's `.mp4` added; if neither exists, the
    Flickr name (the decoder reports it as `missing_file`)."""
    for path in (videos / video, videos / f"{video}.mp4"):
        if path.is_file():
            return path
    return videos / video


def _listed(rows: dict[str, Row], list_path: Path, json_name: str) -> dict[str, Row]:
    """The rows of the videos `list_path` names, in its order, then those of entries naming no video."""
    listed: dict[str, Row] = {}
    for line_no, video in read_lines(list_path, _ADVICE):
        where = f"{list_path.name} line {line_no}"
        row = rows.get(video)
        if row is None:
            problem = ("missing_field", f"{where}: video {video} has no moment in {json_name}")
            row = Row(key=safe_key(video), captions=[], source_id=video, where=where, media_ref=video, error=problem)
        # a copy: a video listed twice is two rows (the second fails as duplicate_key)
        listed[f"{line_no}\0{video}"] = dataclasses.replace(row, where=where, extra=dict(row.extra))
    return listed | {name: row for name, row in rows.items() if name.startswith("\0")}


def didemo_rows(root, split: str) -> Iterator[Row]:
    """Rows in the order videos first appear in the JSON. Key: the `video` name made WebDataset-safe (it holds
    a dot and an `@`, so it gets rows.safe_key's hash suffix); `source.id` keeps it. Captions: one
    paragraph, the video's descriptions in file order joined by spaces. `extra.moments`: each description
    with its annotation id, chunk pairs and their seconds. An entry that is not an object or names no video
    is a failed row of its own (`bad_row`); one with a bad description or times fails its video's row.
    With `{split}_list.txt`, the rows are its videos in its order (a listed video without a moment fails
    as `missing_field`), then the entries that name no video; moments of unlisted videos are not read."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    root = Path(root)
    path = root / f"{split}_data.json"
    entries = load_json(path, _ADVICE)
    if not isinstance(entries, list):
        raise AnnotationFileError(path, f"holds a JSON {type(entries).__name__}, not a list of moments", _ADVICE)
    rows: dict[str, Row] = {}  # video -> its row, in first-appearance order; broken entries under their own name
    for index, entry in enumerate(entries):
        where = f"{path.name} entry {index}"
        video = entry.get("video") if isinstance(entry, dict) else None
        if not isinstance(video, str) or not video.strip():
            shown = f"a JSON {type(entry).__name__}" if not isinstance(entry, dict) else f"video {video!r:.60}"
            rows[f"\0{index}"] = Row(
                key=f"entry{index:06d}",
                captions=[],
                where=where,
                error=("bad_row", f"{where}: {shown}, not a moment naming its video"),
            )
            continue
        row = rows.get(video)
        if row is None:
            row = rows[video] = Row(
                key=safe_key(video),
                captions=[],
                kind="video",
                source_id=video,
                where=where,
                media_ref=video,
                extra={"moments": [], "dl_link": entry.get("dl_link"), "num_segments": entry.get("num_segments")},
            )
        moment, problem = _moment(entry)
        if problem and row.error is None:
            row.error = ("bad_row", f"{where}: {problem} (video {video})")
        if moment:
            row.extra["moments"].append(moment)
    list_path = root / f"{split}_list.txt"
    if list_path.is_file():
        rows = _listed(rows, list_path, path.name)
    for row in rows.values():
        if row.error is None and row.source_id is not None:
            row.captions = [" ".join(m["description"] for m in row.extra["moments"])]
            row.path = str(_video_path(root / "videos", row.source_id))
        yield row
