"""Read a WebDataset tar shard as a stream of samples (members grouped by key), surviving broken tars.

Streams the tar in order, so it works for local files, `pipe:` commands and URLs alike; nothing
is ever written to disk (no member extraction).

Damage is sorted by how much it costs:
- the archive structure breaks (a bad header checksum, a size or checksum field that is not a number, the
  data ending without the two zero blocks that close every tar, a 0-byte file): the reader cannot tell
  where the next member starts, so the shard ends there with `ShardReadError`;
- one member is unusable but the archive around it is intact (its name record is damaged, it is larger
  than `MAX_MEMBER_BYTES`, its name is unsafe or appears twice in a sample): the reader skips its bytes and
  marks the sample it belongs to with a `(reason, detail)` problem, and reading goes on.
"""

import re
from dataclasses import dataclass
from typing import Iterator

from webdataset import gopen

from shard_tools.format import split_member_name

BLOCK = 512
EMPTY = bytes(BLOCK)
MAX_MEMBER_BYTES = 64 << 20  # a stored frame is ~40 KB; a bigger member is damage, never read into memory
READ_CHUNK = 1 << 20  # reads are chunked so a hostile size field never allocates more than exists
_OCTAL = re.compile(rb"[0-7]*")
_REGULAR = (b"0", b"\0", b"7")


class TarFormatError(ValueError):
    """The bytes are not a (complete) tar archive."""


class ShardReadError(Exception):
    """A shard could not be opened or ended early (truncated or corrupt tar); samples before it were read."""

    def __init__(self, url: str, after_key: str | None, cause: BaseException):
        where = f"after sample {after_key!r}" if after_key else "before its first sample"
        super().__init__(f"shard {url}: unreadable {where}: {type(cause).__name__}: {cause}")
        self.url, self.after_key = url, after_key


@dataclass
class Member:
    """A regular file of the tar. `name` is None when its name record was damaged (the name is unknown);
    `data` is None when `problem` = (reason, detail) says why the member is unusable."""

    name: str | None
    data: bytes | None
    problem: tuple[str, str] | None = None


@dataclass
class Sample:
    """The members of one sample ({suffix: bytes}); `problem` = (reason, detail) when it must be skipped."""

    key: str
    members: dict
    problem: tuple[str, str] | None = None

    def flag(self, problem: tuple[str, str]) -> None:
        self.problem = self.problem or problem  # the first problem names the reason


def key_problem(key: str) -> str | None:
    """Why a sample key is unsafe to pass on (keys name files downstream, e.g. in search), or None."""
    if not key:
        return "the member name has no key (it starts with a dot)"
    if key.startswith("/") or ".." in key.split("/"):
        return f"the member name {printable(key)} is absolute or leaves its folder"
    if not key.isprintable():
        if any("\udc80" <= ch <= "\udcff" for ch in key):  # undecodable bytes, kept by surrogateescape
            return f"the member name {printable(key)} is not valid UTF-8"
        return f"the member name {printable(key)} holds control characters"
    return None


def printable(text: str) -> str:
    """`text` with non-ASCII, control characters and undecodable bytes backslash-escaped: safe for any log."""
    return ascii(text)[1:-1]


def _decode_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _number(field: bytes, what: str) -> int:
    """A numeric header field: octal digits (NUL/space padded) or GNU base-256 (sizes >= 8 GiB)."""
    if field[:1] == b"\x80":  # base-256, positive
        return int.from_bytes(field[1:], "big")
    if field[:1] and field[0] & 0x80:  # base-256 negative (0xff) or nonsense: never a valid size or checksum
        raise TarFormatError(f"negative or invalid {what} field {field!r}")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not _OCTAL.fullmatch(digits):  # int(..., 8) alone would accept '-1', '+7', '0o7', '1_0'
        raise TarFormatError(f"the {what} field {field!r} is not an octal number")
    return int(digits, 8) if digits else 0


def _checksum_ok(header: bytes) -> bool:
    stored = _number(header[148:156], "checksum")
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    if stored == unsigned:
        return True
    high = sum(1 for b in header[:148] + header[156:] if b & 0x80)
    return stored == unsigned - 256 * high  # some old tars summed signed bytes (tarfile accepts both)


def _read_exact(stream, size: int) -> bytes:
    """Exactly `size` bytes, read in chunks so memory follows the data actually there."""
    if size <= READ_CHUNK:
        data = stream.read(size)
        if len(data) < size:
            raise TarFormatError(f"unexpected end of data ({len(data)} of {size} bytes of a member)")
        return data
    parts, left = [], size
    while left:
        part = stream.read(min(left, READ_CHUNK))
        if not part:
            raise TarFormatError(f"unexpected end of data ({size - left} of {size} bytes of a member)")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _skip(stream, size: int) -> None:
    left = size
    while left:
        part = stream.read(min(left, READ_CHUNK))
        if not part:
            raise TarFormatError(f"unexpected end of data ({size - left} of {size} bytes of a member)")
        left -= len(part)


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """The '<len> <key>=<value>\\n' records of a pax extended header; TarFormatError when malformed."""
    records, pos = {}, 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits or not digits.isdigit():
            raise TarFormatError(f"pax record at byte {pos} has no length")
        end = pos + int(digits)
        record = data[space + 1 : end]
        if end <= space + 1 or end > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise TarFormatError(f"pax record at byte {pos} is malformed: {data[pos : pos + 40]!r}")
        key, _, value = record[:-1].partition(b"=")
        records[key] = value
        pos = end
    return records


def iter_members(stream) -> Iterator[Member]:
    """Each regular file of an uncompressed tar stream (ustar, GNU long names, pax paths and sizes).

    A small reader instead of `tarfile`: per member it costs a header parse instead of tarfile's generic
    machinery, which was ~40% of the loader's time at T=1. Raises TarFormatError when the archive structure
    is broken (see the module docstring); damage confined to one member comes back as `Member.problem`.
    """
    next_name, next_size, next_problem = None, None, None  # from a GNU long-name or pax header
    while True:
        header = stream.read(BLOCK)
        if header[:2] == b"\x1f\x8b":
            raise TarFormatError("the shard is gzip-compressed; write shards uncompressed (as make-shards does)")
        if len(header) < BLOCK:
            raise TarFormatError(
                "the data ends without the end-of-archive blocks (the shard is truncated)"
                if not header
                else f"unexpected end of data in a header ({len(header)} bytes)"
            )
        if header == EMPTY:  # end of archive: two zero blocks; a cut-off tar lacks them
            if stream.read(BLOCK) != EMPTY:
                raise TarFormatError("a zero block not followed by a second one (the shard is truncated or corrupt)")
            return
        if not _checksum_ok(header):
            raise TarFormatError("bad header checksum (corrupt or not a tar)")
        kind = header[156:157]
        size = _number(header[124:136], "size")
        if next_size is not None and kind in _REGULAR:
            size = next_size
        padding = -size % BLOCK
        if size > MAX_MEMBER_BYTES:
            _skip(stream, size + padding)
            data, problem = None, ("oversized_member", f"{size} bytes, more than the {MAX_MEMBER_BYTES} allowed")
        else:
            data, problem = _read_exact(stream, size), None
            _read_exact(stream, padding)
        if kind == b"L":  # GNU long name for the next member
            next_name, next_problem = None, problem and ("bad_tar_header", f"GNU long name: {problem[1]}")
            if data is not None:
                next_name = _decode_name(data.split(b"\0", 1)[0])
        elif kind == b"x":  # pax extended header for the next member
            try:
                if data is None:
                    raise TarFormatError(problem[1])
                records = _pax_records(data)
                if b"path" in records:
                    next_name = _decode_name(records[b"path"])
                if b"size" in records:
                    if not records[b"size"].isdigit():
                        raise TarFormatError(f"pax size {records[b'size'][:40]!r} is not a number")
                    next_size = int(records[b"size"])
            except TarFormatError as err:  # the next member's name is unknown; the archive is still intact
                next_name, next_problem = None, ("bad_tar_header", f"damaged pax header: {err}")
        elif kind in _REGULAR:
            if next_problem is not None:
                yield Member(None, None, next_problem)
            else:
                name = next_name
                if name is None:
                    name = _decode_name(header[:100].split(b"\0", 1)[0])
                    if header[257:262] == b"ustar" and header[345:346] != b"\0":
                        name = _decode_name(header[345:500].split(b"\0", 1)[0]) + "/" + name
                yield Member(name, data, problem)
            next_name, next_size, next_problem = None, None, None
        elif kind != b"g":  # directories, links: nothing to read; global pax headers: ignored
            next_name, next_size, next_problem = None, None, None


def iter_samples(url: str) -> Iterator[Sample]:
    """Yield a Sample for each group of consecutive members sharing a key.

    A member whose name record is damaged belongs, as far as anyone can tell, to the sample being read
    (make-shards writes a sample's frames first, so if it was the next sample's first frame, that sample
    lacks a frame and is skipped too); that sample is marked, so the number of samples stays right.
    A read error ends the stream with ShardReadError after the complete groups before it; the group that
    was being read when the error hit is dropped, since it may be missing members.
    """
    current, unnamed, last_complete = None, [], None
    stream = None
    try:
        stream = gopen(url, "rb", bufsize=1 << 20)
        for member in iter_members(stream):
            if member.name is None:
                if current is None:
                    unnamed.append(member.problem)  # before the shard's first named member: goes to the first
                else:
                    current.flag(member.problem)
                continue
            key, suffix = split_member_name(member.name)
            if current is None or key != current.key:
                if current is not None:
                    yield current
                    last_complete = current.key
                current = Sample(key, {})
                if (why := key_problem(key)) is not None:
                    current.flag(("bad_key", why))
                for problem in unnamed:
                    current.flag(problem)
                unnamed = []
            if member.problem is not None:
                current.flag(member.problem)
            elif suffix in current.members:
                current.flag(("duplicate_member", f"member {printable(member.name)} appears twice"))
            else:
                current.members[suffix] = member.data
        if current is None and unnamed:  # the only members had damaged names: still one sample, skipped
            current = Sample("", {}, unnamed[0])
        if current is not None:
            yield current
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
