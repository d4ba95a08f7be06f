"""A folder of video and image files -> shards, so `launch/search.py extract --media DIR` can embed it."""

import logging
from pathlib import Path

from shard_tools.api import RunOptions, ShardOptions, make_shards
from shard_tools.decode import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from shard_tools.format import MANIFEST
from shard_tools.rows import safe_key

log = logging.getLogger(__name__)


def shards_from_media(media: Path, out: Path, frames: int) -> Path:
    """Turn a folder of videos/images into shards under OUT/shards with make-shards' library API.

    The caption of each file is its name (underscores and dashes read as spaces), which is all a bare
    folder says about its files. An existing complete OUT/shards is reused (delete it to re-read).
    """
    if not media.is_dir():
        raise FileNotFoundError(f"--media {media} is not a folder")
    files = sorted(p for p in media.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{media} holds no video or image files ({', '.join(VIDEO_SUFFIXES + IMAGE_SUFFIXES)})")
    shards = out / "shards"
    if (shards / MANIFEST).is_file():
        log.info("reusing the shards in %s (delete it to re-read %s)", shards, media)
        return shards
    rows = [
        {
            "key": safe_key(str(p.relative_to(media).with_suffix(""))),
            "path": str(p.resolve()),
            "caption": p.stem.replace("_", " ").replace("-", " "),
            "kind": "image" if p.suffix.lower() in IMAGE_SUFFIXES else "video",
        }
        for p in files
    ]
    report = make_shards(rows, shards, ShardOptions(name="media", frames=frames), RunOptions(progress=False))
    log.info("made shards of %s: %s", media, report.summary())
    if report.manifest is None:
        raise ValueError(f"make-shards could not finish {shards} (missing chunks {report.missing_chunks})")
    return shards
