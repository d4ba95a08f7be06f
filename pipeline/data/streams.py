"""What one reader (a rank's DataLoader worker) does for one dataset: read shards, shuffle, decode, batch.

Training position = (epoch, block, emitted). Each epoch has a shard order shared by all ranks
(`shardlists.epoch_order`); reader g of G takes every G-th shard and cuts its list into blocks of
`shards_per_block` shards. A block is read by interleaving its shards (a seeded choice among the open
ones) through a seeded shuffle buffer. Everything random is a function of (seed, dataset, epoch, reader,
block) or, per sample, of (seed, dataset, epoch, shard, index in shard), never of the wall clock or of
how far ahead a worker has prefetched. So to resume at (epoch, block, emitted) a reader replays that one
block's tar reading and shuffling, without decoding any JPEG, and drops the first `emitted` samples:
resume costs at most one block of reading, never a replay of the stream.

Frames and caption are chosen when a sample is read, before the shuffle buffer, so the buffer holds only the
T JPEGs a sample will use (not all K) plus its caption: memory per reader is about
`shuffle_buffer x T x frame bytes`.
"""

import json
import logging
from dataclasses import dataclass, field

import numpy as np
import simplejpeg
import torch

from pipeline.data import frames as frame_ops
from pipeline.data import transforms
from pipeline.data.options import DatasetSpec, LoaderOptions
from pipeline.data.shardlists import ShardSet, epoch_order, stream_id, worker_shards
from pipeline.data.tarstream import Sample, ShardReadError, iter_samples, printable
from pipeline.data.tokenize import load_tokenizer, tokenize
from shard_tools.format import frame_index

log = logging.getLogger(__name__)

LOG_FIRST = 20  # log every skip up to this many per reason and reader, then every LOG_EVERY-th
LOG_EVERY = 1000
MAX_FRAME_PIXELS = 4096 * 4096  # make-shards stores short side 256; anything this large is damage


class CorruptDataError(RuntimeError):
    """Too large a fraction of a dataset's samples could not be used."""


def parse_meta(data: bytes) -> dict:
    """A sample's json, checked where the loader reads it; ValueError saying what is wrong otherwise."""
    try:
        meta = json.loads(data.decode("utf-8"))
    except RecursionError:  # json.loads recurses once per nesting level: '[[[[...' would crash the worker
        raise ValueError("nested too deeply") from None
    if not isinstance(meta, dict):
        raise ValueError(f"not a JSON object but {type(meta).__name__}")
    captions = meta.get("captions")
    if captions is not None:
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"'captions' must be a list of strings, got {_shape(captions)}")
        for c in captions:  # a lone surrogate (a JSON escape such as \\udc80) would crash the tokenizer
            try:
                c.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"caption {ascii(c[:60])} holds a lone surrogate, not text") from None
    frames = meta.get("num_frames")
    if frames is not None and (type(frames) is not int or frames < 1):  # bool is an int subclass: excluded
        raise ValueError(f"'num_frames' must be a positive integer, got {_shape(frames)}")
    return meta


def check_frame_sizes(jpegs: list[bytes]) -> None:
    """ValueError for a JPEG whose header claims more than MAX_FRAME_PIXELS: a few hundred bytes can claim
    60000 x 60000, and decoding that would allocate 10 GiB."""
    for data in jpegs:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        if height * width > MAX_FRAME_PIXELS:
            raise ValueError(f"frame claims {width} x {height} pixels, more than the {MAX_FRAME_PIXELS} allowed")


def _shape(value) -> str:
    if isinstance(value, list):
        return f"a list holding {sorted({type(v).__name__ for v in value})}"
    return f"{type(value).__name__} {ascii(value)[:60]}"


@dataclass
class RawSample:
    """A sample as read from its shard, reduced to what the batch needs (before JPEG decoding)."""

    key: str
    shard: str
    jpegs: list[bytes]
    caption: str
    captions: list[str]
    seed: list[int]  # per-sample RNG seed for augmentation
    short: bool  # fewer stored frames than T


@dataclass
class Counters:
    """Per-reader accounting for one dataset; summed over readers by the loader."""

    seen: int = 0  # samples (and unreadable shards) met
    used: int = 0  # samples delivered in batches
    short: int = 0  # used samples with fewer stored frames than T (frames repeated)
    skipped: dict = field(default_factory=dict)  # reason -> count

    def to_dict(self) -> dict:
        return {"seen": self.seen, "used": self.used, "short": self.short, "skipped": dict(self.skipped)}

    @classmethod
    def from_dict(cls, d: dict) -> "Counters":
        return cls(d["seen"], d["used"], d["short"], dict(d["skipped"]))


@dataclass(frozen=True)
class ReaderConfig:
    """One dataset as a reader sees it: its spec, its resolved shards and the shared loader options, passed
    as they are (picklable for workers)."""

    spec: DatasetSpec
    shards: ShardSet
    train: bool
    options: LoaderOptions


class DatasetReader:
    """Reads, decodes and batches one dataset for one reader; `quiet` during a resume replay."""

    def __init__(self, cfg: ReaderConfig, counters: Counters | None = None):
        self.cfg = cfg
        self.sid = stream_id(cfg.spec.name)
        self.counters = counters or Counters()
        self.quiet = False

    # ---- accounting -------------------------------------------------------------------------------------
    def skip(self, reason: str, shard: str, key: str | None, detail: str, count: int = 1, unseen: bool = False) -> None:
        """Count and log `count` unusable samples; `unseen` when they were never counted as seen (a broken
        shard's lost tail). Raises CorruptDataError once the unusable fraction passes the limit."""
        if self.quiet:
            return
        c = self.counters
        if unseen:
            c.seen += count
        c.skipped[reason] = c.skipped.get(reason, 0) + count
        n = c.skipped[reason]
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            log.warning(
                "%s: skipped %s (%s) in %s: %s [%d so far]", self.cfg.spec.name, key or "-", reason, shard, detail, n
            )
        bad = sum(c.skipped.values())
        if c.seen >= self.cfg.options.corrupt_check_after and bad > self.cfg.options.max_corrupt_fraction * c.seen:
            raise CorruptDataError(
                f"dataset {self.cfg.spec.name!r}: {bad} of {c.seen} samples unusable ({bad / c.seen:.1%} > "
                f"max_corrupt_fraction {self.cfg.options.max_corrupt_fraction:.1%}); by reason: {c.skipped}. "
                f"Last: {reason} at {shard} key {key}: {detail}. Check the shards (make-shards verify) or "
                f"raise data.options.max_corrupt_fraction if this is expected."
            )

    # ---- reading ----------------------------------------------------------------------------------------
    def prepare(self, sample: Sample, shard: str, seed: list[int]) -> RawSample | None:
        """Pick frames and caption from a sample's members; None (counted) when it is unusable."""
        cfg = self.cfg
        key, members = sample.key, sample.members
        if sample.problem is not None:  # found by the tar reader (damaged member, unsafe key): see tarstream
            reason, detail = sample.problem
            self.skip(reason, shard, printable(key), detail)
            return None
        try:
            meta = parse_meta(members["json"]) if "json" in members else {}
        except ValueError as err:
            self.skip("bad_json", shard, key, str(err))
            return None
        try:
            primary = members.get("txt", b"").decode("utf-8").strip()
        except UnicodeDecodeError as err:
            self.skip("bad_text", shard, key, f".txt is not UTF-8: {err}")
            return None
        numbered = sorted((i, s) for s in members if (i := frame_index(s)) is not None)
        if not numbered or [i for i, _ in numbered] != list(range(len(numbered))):
            self.skip("missing_frames", shard, key, f"frames present: {[s for _, s in numbered]}")
            return None
        stored = len(numbered)
        for source, count in (
            ("the manifest's frames_per_sample", cfg.shards.frames_per_sample),
            ("its json num_frames", meta.get("num_frames")),
        ):
            if count is not None and stored != count:
                self.skip("wrong_frame_count", shard, key, f"{stored} frames stored, {source} says {count}")
                return None
        captions = [c for c in meta.get("captions") or [] if c.strip()]
        if not captions and primary:
            captions = [primary]
        if not captions:
            self.skip("missing_caption", shard, key, "no .txt and no json captions")
            return None
        rng = np.random.default_rng(seed)
        wanted = 1 if cfg.spec.kind == "image" else cfg.spec.num_frames
        picks = frame_ops.frame_indices(stored, wanted, "rand" if cfg.train else "uniform", rng)
        if cfg.train:
            caption = captions[int(rng.integers(len(captions)))]
        elif cfg.spec.caption_mode == "paragraph":
            caption = " ".join(captions)
        else:
            caption = primary or captions[0]
        return RawSample(key, shard, [members[numbered[i][1]] for i in picks], caption, captions, seed, stored < wanted)

    def read_shard(self, shard_index: int, epoch: int, keep=lambda ordinal: True, count_loss: bool = True):
        """Yield RawSamples of one shard in tar order.

        `keep(ordinal)` selects samples (eval striding); `count_loss` says whether this reader accounts for
        the samples a broken or short shard loses (with striding, only one of the readers sharing it does).
        With a manifest, the samples found are compared with its count for the shard, so that samples used
        + samples skipped always add up to it: a shard cut off (even at a member boundary) or holding fewer
        samples than listed has its shortfall counted.
        """
        url = self.cfg.shards.urls[shard_index]
        expected = self.cfg.shards.counts[shard_index] if self.cfg.shards.counts else None
        ordinal, failure = 0, None
        try:
            for sample in iter_samples(url):
                mine = keep(ordinal)
                seed = [self.cfg.options.seed, self.sid, epoch, shard_index, ordinal]
                ordinal += 1
                if not mine:
                    continue
                if not self.quiet:
                    self.counters.seen += 1
                prepared = self.prepare(sample, url, seed)
                if prepared is not None:
                    yield prepared
        except ShardReadError as err:
            failure = err
        if count_loss:
            self.account_shortfall(url, expected, ordinal, failure)

    def account_shortfall(self, url: str, expected: int | None, found: int, failure: ShardReadError | None):
        """Count the samples a shard lacks: `found` samples read, `expected` listed in the manifest."""
        if failure is not None:
            # without a manifest the loss is unknown: at least the sample being read when it broke
            lost = max(expected - found, 0) if expected is not None else 1
            after = printable(failure.after_key) if failure.after_key is not None else None
            self.skip("truncated_tar", url, after, f"{lost} samples lost: {failure.__cause__}", count=lost, unseen=True)
        elif expected is not None and found < expected:
            self.skip(
                "missing_samples",
                url,
                None,
                f"the tar ends properly after {found} samples but the "
                f"manifest lists {expected}: the shard was replaced or the manifest is stale "
                f"(make-shards verify)",
                count=expected - found,
                unseen=True,
            )
        if expected is not None and found > expected and not self.quiet:
            log.warning(
                "%s: shard %s holds %d samples, more than the %d its manifest entry lists; the manifest "
                "is stale or the tar repeats keys (make-shards verify)",
                self.cfg.spec.name,
                url,
                found,
                expected,
            )

    def block_samples(self, epoch: int, shard_ids: list[int], rng: np.random.Generator):
        """Interleave the block's shards through a shuffle buffer, all driven by `rng`."""
        readers = [self.read_shard(s, epoch) for s in shard_ids]
        buffer = []
        while readers:
            i = int(rng.integers(len(readers)))
            try:
                buffer.append(next(readers[i]))
            except StopIteration:
                readers.pop(i)
                continue
            if len(buffer) >= self.cfg.options.shuffle_buffer:
                yield self._pop_random(buffer, rng)
        while buffer:
            yield self._pop_random(buffer, rng)

    @staticmethod
    def _pop_random(buffer: list, rng: np.random.Generator):
        j = int(rng.integers(len(buffer)))
        buffer[j], buffer[-1] = buffer[-1], buffer[j]
        return buffer.pop()

    def train_samples(self, reader: int, readers: int, position: list[int]):
        """Endless RawSamples for reader `reader` of `readers`, starting at position [epoch, block, emitted].

        `position` is updated in place after each sample, so it always names the next one.
        """
        cfg = self.cfg
        epoch, block, emitted = position
        produced = block > 0 or emitted > 0  # whether this epoch yielded anything (guards against empty shards)
        while True:
            shards = worker_shards(
                epoch_order(len(cfg.shards.urls), cfg.options.seed, cfg.spec.name, epoch), reader, readers
            )
            per_block = cfg.options.shards_per_block
            blocks = [shards[i : i + per_block] for i in range(0, len(shards), per_block)]
            if block >= len(blocks):
                if not produced:  # unusable samples trip max_corrupt_fraction; this catches empty shards
                    raise CorruptDataError(
                        f"dataset {cfg.spec.name!r}: reader {reader} went through a whole epoch "
                        f"of its shards {[cfg.shards.urls[s] for s in shards]} without one "
                        f"sample; counters: {self.counters.to_dict()}"
                    )
                epoch, block, emitted, produced = epoch + 1, 0, 0, False
                position[:] = [epoch, block, emitted]
                continue
            rng = np.random.default_rng([cfg.options.seed, self.sid, epoch, reader, block])
            samples = self.block_samples(epoch, blocks[block], rng)
            if emitted:  # resume: replay the block's reading and shuffling, decode nothing
                self.quiet = True
                for _ in range(emitted):
                    next(samples)
                self.quiet = False
            for sample in samples:
                emitted, produced = emitted + 1, True
                position[:] = [epoch, block, emitted]
                yield sample
            block, emitted = block + 1, 0
            position[:] = [epoch, block, emitted]

    # ---- decoding and batching --------------------------------------------------------------------------
    def decode(self, sample: RawSample) -> torch.Tensor | None:
        """JPEGs -> augmented uint8 [T, 3, res, res]; None (counted) for a corrupt JPEG."""
        options = self.cfg.options
        try:
            check_frame_sizes(sample.jpegs)
            clip = frame_ops.decode_frames(sample.jpegs)
        except ValueError as err:
            self.skip("corrupt_jpeg", sample.shard, sample.key, str(err))
            return None
        if self.cfg.train:
            # its own stream (seed + tag), independent of the frame and caption draws made in `prepare`
            rng = np.random.default_rng(sample.seed + [1])
            return transforms.train_clip(
                clip, rng, options.input_res, options.crop_scale, options.crop_ratio, options.hflip_p
            )
        return transforms.eval_clip(clip, options.input_res, options.eval_resize, options.eval_crop)

    def make_batch(self, samples, limit: int | None = None) -> dict | None:
        """Decode up to batch_size samples from the iterator into a batch; None when it is exhausted."""
        clips, used = [], []
        for sample in samples:
            clip = self.decode(sample)
            if clip is None:
                continue
            clips.append(clip)
            used.append(sample)
            if len(used) == self.cfg.spec.batch_size:
                break
        if not used:
            return None
        self.counters.used += len(used)
        self.counters.short += sum(s.short for s in used)
        tokenizer = load_tokenizer(self.cfg.options.tokenizer)
        batch = {
            "video": torch.stack(clips),
            "text": tokenize(tokenizer, [s.caption for s in used], self.cfg.options.max_text_length),
            "keys": [s.key for s in used],
            "dataset": self.cfg.spec.name,
        }
        if not self.cfg.train:
            batch["captions"] = [s.captions if self.cfg.spec.caption_mode == "all" else [s.caption] for s in used]
        return batch
