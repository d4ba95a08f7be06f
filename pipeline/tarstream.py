"""Read a WebDataset tar shard as a stream of samples (members grouped by key), surviving broken tars.

Streams the tar in order, so it works for local files, `pipe:` commands and URLs alike; nothing
is ever written to disk (no member extraction).
"""
import posixpath
from typing import Iterator

from webdataset import gopen


BLOCK = 512
EMPTY = bytes(BLOCK)


class TarFormatError(ValueError):
    """The bytes are not a (complete) tar archive."""


class ShardReadError(Exception):
    """A shard could not be opened or ended early (truncated or corrupt tar); samples before it were read."""

    def __init__(self, url: str, after_key: str | None, cause: BaseException):
        where = f"after sample {after_key!r}" if after_key else "before its first sample"
        super().__init__(f"shard {url}: unreadable {where}: {type(cause).__name__}: {cause}")
        self.url, self.after_key = url, after_key


def split_member_name(name: str) -> tuple[str, str]:
    """'dir/abc.003.jpg' -> ('dir/abc', '003.jpg'): the key is everything up to the basename's first dot."""
    folder, base = posixpath.split(name)
    stem, _, suffix = base.partition(".")
    return posixpath.join(folder, stem) if folder else stem, suffix


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _pax_path(records: bytes) -> str | None:
    """The 'path' record of a pax extended header ('<len> path=<value>\n' records)."""
    while records:
        length = int(records.split(b" ", 1)[0])
        record, records = records[:length], records[length:]
        key, _, value = record.split(b" ", 1)[1].partition(b"=")
        if key == b"path":
            return value[:-1].decode("utf-8")
    return None


def iter_members(stream) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file of an uncompressed tar stream (ustar, GNU long names, pax paths).

    A small reader instead of `tarfile`: per member it costs a header parse instead of tarfile's generic
    machinery, which was ~40% of the loader's time at T=1. Raises TarFormatError on a bad or cut-off archive.
    """
    next_name = None
    while True:
        header = stream.read(BLOCK)
        if not header or header == EMPTY:  # end of archive (missing end blocks are tolerated, as tarfile does)
            return
        if header[:2] == b"\x1f\x8b":
            raise TarFormatError("the shard is gzip-compressed; write shards uncompressed (as make-shards does)")
        if len(header) < BLOCK:
            raise TarFormatError(f"unexpected end of data in a header ({len(header)} of {BLOCK} bytes)")
        stored = _octal(header[148:156])
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise TarFormatError("bad header checksum (corrupt or not a tar)")
        size, kind = _octal(header[124:136]), header[156:157]
        data = stream.read(size)
        padding = -size % BLOCK
        if len(data) < size or len(stream.read(padding)) < padding:
            raise TarFormatError("unexpected end of data")
        if kind == b"L":                      # GNU long name for the next member
            next_name = data.split(b"\0", 1)[0].decode("utf-8")
        elif kind == b"x":                    # pax extended header for the next member
            next_name = _pax_path(data) or next_name
        elif kind in (b"0", b"\0", b"7"):    # regular file
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            if header[257:262] == b"ustar" and header[345:346] != b"\0":
                name = header[345:500].split(b"\0", 1)[0].decode("utf-8") + "/" + name
            yield next_name or name, data
            next_name = None
        else:                                 # directories, links, global pax headers: nothing to read
            next_name = None if kind != b"g" else next_name


def iter_samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {suffix: bytes}) for each group of consecutive members sharing a key.

    A read error ends the stream with ShardReadError after the complete groups before it; the group that
    was being read when the error hit is dropped, since it may be missing members.
    """
    key, members, last_complete = None, {}, None
    stream = None
    try:
        stream = gopen(url, "rb", bufsize=1 << 20)
        for name, data in iter_members(stream):
            member_key, suffix = split_member_name(name)
            if member_key != key:
                if key is not None:
                    yield key, members
                    last_complete = key
                key, members = member_key, {}
            members[suffix] = data
        if key is not None:
            yield key, members
        stream.close()  # a `pipe:` stream checks the command's exit status here
        stream = None
    except (TarFormatError, OSError, ValueError) as err:
        raise ShardReadError(url, last_complete, err) from err
    finally:
        if stream is not None:
            try:
                stream.close()
            except Exception:  # already failing; the original error is the one to report
                pass
