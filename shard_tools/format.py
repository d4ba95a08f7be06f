"""The `fit-shards/1` format in code: the manifest's name and format, tar member names, member checksums.

Every reader and writer of shard folders (make-shards, verify, the loader, search, the demo) takes these
names from here; docs/DESIGN.md describes the format. A sample is the group of tar members sharing a key:

    {key}.000.jpg ... {key}.{K-1:03d}.jpg   the K stored frames
    {key}.txt                               the primary caption
    {key}.json                              the metadata

The key never contains a dot (make-shards keys are [A-Za-z0-9_-]+, see shard_tools.rows.safe_key), so the
key is the member name up to the first dot of its base name, as WebDataset reads it.

Stdlib and foundation only: the loader and search import this without pulling in PyAV or simplejpeg.
"""

import json
import posixpath
import re
import zlib
from pathlib import Path

from foundation.fsutil import atomic_write_json

FORMAT = "fit-shards/1"
MANIFEST = "manifest.json"
CAPTION_SUFFIX = "txt"
META_SUFFIX = "json"
_FRAME_SUFFIX = re.compile(r"([0-9]{3,})\.jpg")


class ManifestError(ValueError):
    """A manifest that cannot be used (missing, unreadable, not JSON, not an object, another format).
    The message names the file and what to do."""


class ManifestMissingError(ManifestError, FileNotFoundError):
    """No manifest at the path: the folder is not a finished make-shards folder."""


def read_manifest(path: str | Path) -> dict:
    """The manifest at `path` (a DIR/manifest.json), parsed, with its format name checked.

    Raises ManifestMissingError when the file does not exist and ManifestError when it cannot be used;
    callers that report in their own terms (the loader's ConfigError naming the config key) wrap it.
    """
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestMissingError(
            f"{path} is missing: {path.parent} is not a finished make-shards folder (make-shards writes the "
            f"manifest last, once every shard is complete: finish or re-run make-shards, or run "
            f"`make-shards manifest {path.parent}` after all array tasks ended)"
        ) from None
    # ValueError: not UTF-8 or not JSON; RecursionError: absurdly deep nesting
    except (OSError, ValueError, RecursionError) as err:
        raise ManifestError(
            f"{path} is unreadable ({type(err).__name__}: {err}); write it again with `make-shards manifest "
            f"{path.parent}`"
        ) from err
    if not isinstance(manifest, dict):
        raise ManifestError(
            f"{path} holds {json.dumps(manifest)[:60]}, not a manifest (a JSON object); write it again with "
            f"`make-shards manifest {path.parent}`"
        )
    if manifest.get("format") != FORMAT:
        raise ManifestError(
            f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r} (write it with make-shards)"
        )
    return manifest


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    """Write `folder`/manifest.json atomically (a reader never sees half a manifest); returns its path."""
    path = Path(folder) / MANIFEST
    atomic_write_json(path, manifest)
    return path


def frame_suffix(index: int) -> str:
    """The member suffix of stored frame `index`: 3 -> '003.jpg'."""
    return f"{index:03d}.jpg"


def frame_member(key: str, index: int) -> str:
    """'clip1', 3 -> 'clip1.003.jpg'."""
    return f"{key}.{frame_suffix(index)}"


def caption_member(key: str) -> str:
    return f"{key}.{CAPTION_SUFFIX}"


def meta_member(key: str) -> str:
    return f"{key}.{META_SUFFIX}"


def split_member_name(name: str) -> tuple[str, str]:
    """'dir/abc.003.jpg' -> ('dir/abc', '003.jpg'): the key is everything up to the base name's first dot."""
    folder, base = posixpath.split(name)
    stem, _, suffix = base.partition(".")
    return posixpath.join(folder, stem) if folder else stem, suffix


def frame_index(suffix: str) -> int | None:
    """The frame number of a member suffix written by frame_suffix ('003.jpg' -> 3), None for any other
    suffix ('txt', 'json', '3.jpg', '0003.jpg')."""
    match = _FRAME_SUFFIX.fullmatch(suffix)
    if match is None:
        return None
    index = int(match[1])
    return index if frame_suffix(index) == suffix else None


def member_crc32(data: bytes) -> str:
    """The checksum of a member's bytes as the stats records keep it: CRC-32, 8 lowercase hex digits."""
    return f"{zlib.crc32(data):08x}"
