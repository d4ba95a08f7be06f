"""The loader's config sections: one dataset (`data.train[i]` / `data.eval[i]`) and the shared `data.options`.

Imports no torch, so that reading a run config does not load it (pipeline.train.config). Both are checked by
`Cls.from_dict(data, where)` (foundation.schema); errors name the key path (docs/LOADER.md lists the keys).
"""

from dataclasses import dataclass, field
from typing import Literal

from foundation.schema import INTERNAL, ConfigError, Section
from pipeline.data import shardlists

# torchvision's ImageNet statistics, the original's normalisation (pipeline.data.transforms.normalize_video)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DatasetSpec(Section):
    """One dataset of a run: where its shards are and how to batch it (config `data.train[i]` / `data.eval[i]`)."""

    name: str
    shards: str | list[str]
    batch_size: int  # per rank, per step
    kind: Literal["video", "image"] | None = None  # from the manifest when absent
    num_frames: int = 1  # T frames per sample fed to the model (images: 1)
    # eval only, the benchmark's query protocol (docs/TRAINING.md, 'Benchmarks'): "primary" = one query per
    # video, its first caption (MSR-VTT 1k-A, LSMDC); "all" = every caption its own text->video query
    # (MSVD); "paragraph" = the video's captions joined in order into one query (DiDeMo)
    caption_mode: Literal["primary", "all", "paragraph"] = "primary"
    num_samples: int | None = None  # total samples; only needed when no manifest gives the counts
    where: str = field(default="data", metadata=INTERNAL)  # the key path, for errors found by resolve()
    _resolved: shardlists.ShardSet | None = field(default=None, repr=False, compare=False, metadata=INTERNAL)

    def check(self, where: str) -> None:
        self.where = where
        if isinstance(self.shards, list) and not self.shards:
            raise ConfigError(f"{where}.shards: expected a non-empty list of URL strings")
        if not self.name or "/" in self.name:
            raise ConfigError(f"{where}.name: must be non-empty and contain no '/' (it names log counters)")
        for key in ("num_frames", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: must be >= 1, got {getattr(self, key)}")
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"{where}.num_samples: must be >= 1")

    def resolve(self) -> shardlists.ShardSet:
        """Find the shards (and their counts and kind from a manifest); errors name this spec's keys."""
        if self._resolved is None:
            shard_set = shardlists.resolve_shards(self.shards, f"{self.where}.shards")
            kind = self.kind or shard_set.kind
            if kind is None:
                raise ConfigError(
                    f"{self.where}.kind: no manifest gives the kind of {shard_set.origin}; "
                    f"set kind to 'video' or 'image'"
                )
            if self.kind and shard_set.kind and self.kind != shard_set.kind:
                raise ConfigError(
                    f"{self.where}.kind: {self.kind!r}, but {shard_set.origin} holds {shard_set.kind!r} samples"
                )
            if kind == "image" and self.num_frames != 1:
                raise ConfigError(
                    f"{self.where}.num_frames: an image dataset has 1 frame per sample, got {self.num_frames}"
                )
            if shard_set.counts is None and self.num_samples is None:
                raise ConfigError(
                    f"{self.where}.num_samples: no manifest.json beside {shard_set.origin} gives "
                    f"sample counts; give num_samples (the total) or point shards at the "
                    f"make-shards folder"
                )
            self.kind = kind
            self._resolved = shard_set
        return self._resolved

    @property
    def total_samples(self) -> int:
        return self.num_samples if self.num_samples is not None else self.resolve().total_samples


def check_unique_names(specs: list[DatasetSpec], where: str) -> None:
    """Datasets are told apart by name (steps are {name: batch}, counters and losses are per name)."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: dataset names must be unique, got {names}")


@dataclass
class LoaderOptions(Section):
    """Options shared by all datasets (config `data.options`); the evaluation transform settings (input_res,
    eval_resize, eval_crop, mean, std, tokenizer, max_text_length) also serve search (pipeline.search.inference)."""

    num_workers: int = 4
    input_res: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN  # used by the trainer: normalize_video(video, mean, std)
    std: tuple[float, float, float] = IMAGENET_STD
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # The original's flip. Set 0 when captions name directions ("moves to the left"): a flipped clip
    # then contradicts its caption (the demo does; WebVid captions say left/right too).
    hflip_p: float = 0.5
    eval_resize: int = 256  # evaluation: resize the short side to this, centre-crop eval_crop, then input_res
    eval_crop: int = 256
    tokenizer: str = "distilbert-base-uncased"  # hub name or local folder
    max_text_length: int = 128  # tokens; padding is to the longest caption of the batch
    shuffle_buffer: int = 1000  # samples each reader holds for shuffling
    shards_per_block: int = 2  # shards one reader reads interleaved at a time (the unit of exact resume)
    seed: int = 0  # shard order, shuffling, frame picks and augmentation all follow from it
    max_corrupt_fraction: float = 0.05  # stop (CorruptDataError) when more of a reader's samples are unusable,
    corrupt_check_after: int = 1000  # once it has seen at least this many (docs/LOADER.md)
    prefetch_factor: int = 2  # passed to the DataLoader, as pin_memory
    pin_memory: bool = False

    def check(self, where: str) -> None:
        for key in ("num_workers", "seed", "corrupt_check_after"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key}: must be >= 0, got {getattr(self, key)}")
        for key in (
            "input_res",
            "eval_resize",
            "eval_crop",
            "max_text_length",
            "shuffle_buffer",
            "shards_per_block",
            "prefetch_factor",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.hflip_p <= 1:
            raise ConfigError(f"{where}.hflip_p: must be in [0, 1], got {self.hflip_p}")
        if not 0 <= self.max_corrupt_fraction <= 1:
            raise ConfigError(f"{where}.max_corrupt_fraction: must be in [0, 1]")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"{where}.crop_scale: need 0 < min <= max <= 1")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(f"{where}.crop_ratio: need 0 < min <= max")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"{where}.std: every value must be > 0")
