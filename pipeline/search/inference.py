"""Simple inference: load a trained model, embed videos, images and captions, rank one against the other.

    from pipeline.search.inference import Embedder
    emb = Embedder.load("runs/demo/weights/final")          # or the original's model_best.pth.tar
    v = emb.embed_video_file("clip.mp4")                    # [D], unit length
    emb.rank_captions(v, ["a red square moves to the left", "a blue circle"])   # [(caption, score), ...]

Frames go through the exact path the shards and the evaluation loader take, so a file embedded here gets
the same vector as the same clip indexed from shards: PyAV decoding of the middle frame of T equal
segments (`shard_tools.decode`), JPEG at the shards' quality, the evaluation crop
(`pipeline.data.transforms.eval_clip`) and ImageNet normalisation. Every embedding returned is L2-normalised,
so a dot product is the cosine similarity the model was trained with.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.data.frames import decode_frames, frame_indices
from pipeline.data.options import LoaderOptions
from pipeline.data.tokenize import load_tokenizer, tokenize
from pipeline.data.transforms import eval_clip, normalize_video
from pipeline.train.checkpoints import find_run_config, load_model
from pipeline.train.config import load_config
from shard_tools.decode import IMAGE_SUFFIXES, FrameSpec, SampleError, decode_sample

log = logging.getLogger(__name__)

STORED_FRAMES = FrameSpec().frames  # make-shards' default K


@dataclass(frozen=True)
class Preprocess:
    """How frames and captions become model inputs: T frames and the run's evaluation settings."""

    num_frames: int  # T frames per clip (the run's first eval dataset, else the model's max)
    # the run's data.options; input_res, eval_resize, eval_crop, mean, std, tokenizer (hub name or folder) and
    # max_text_length are used here as the evaluation loader uses them
    options: LoaderOptions

    @classmethod
    def for_model(cls, config, tokenizer: str | None = None) -> "Preprocess":
        """Defaults when no run config is known: the model's T and size, the loader's default crop."""
        return cls(
            num_frames=config.video.num_frames,
            options=LoaderOptions(input_res=config.video.img_size, tokenizer=tokenizer or config.text.model),
        )

    @classmethod
    def from_run_config(cls, path: str | Path, config) -> "Preprocess":
        """From a run's config.json (what `launch/train.py` wrote to its output_dir)."""
        path = Path(path)
        run = load_config(path)
        options = dataclasses.replace(
            run.data.options, tokenizer=_run_relative(run.data.options.tokenizer, path, run.output_dir)
        )
        videos = [d for d in run.data.eval if d.kind != "image"]
        return cls(num_frames=videos[0].num_frames if videos else config.video.num_frames, options=options)

    def with_tokenizer(self, tokenizer: str) -> "Preprocess":
        return dataclasses.replace(self, options=dataclasses.replace(self.options, tokenizer=tokenizer))

    def clip(self, frames: np.ndarray) -> torch.Tensor:
        """K decoded frames uint8 [K, H, W, 3] -> the model's eval clip uint8 [T, 3, res, res]."""
        picked = frames[frame_indices(len(frames), self.num_frames, "uniform")]
        options = self.options
        return eval_clip(picked, res=options.input_res, resize=options.eval_resize, crop=options.eval_crop)


def _run_relative(value: str, config_path: Path, output_dir: str) -> str:
    """A relative path in a run config is relative to where training ran, i.e. config.json's folder minus
    `output_dir`; hub names and paths that exist as given are returned unchanged."""
    if Path(value).is_absolute() or Path(value).exists() or Path(output_dir).is_absolute():
        return value
    depth = len(Path(output_dir).parts)
    base = config_path.resolve().parent
    for _ in range(depth):
        base = base.parent
    candidate = base / value
    return str(candidate) if candidate.exists() else value


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Embedder:
    """A FrozenInTime model on one device with the preprocessing its run used."""

    def __init__(
        self, model, prep: Preprocess | None = None, device: str | torch.device | None = None, source: str = ""
    ):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.prep = prep or Preprocess.for_model(self.config)
        self.source = source
        self.tokenizer = load_tokenizer(self.prep.options.tokenizer)

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device | None = None, run_config: str | Path | None = None
    ) -> "Embedder":
        """Weights + preprocessing. The run config is `run_config`, else RUN/config.json beside an exported
        weights folder; without one, the model's own sizes and the loader's defaults are used."""
        path = Path(path)
        model = load_model(path)
        run_config = run_config or find_run_config(path)
        saved_tokenizer = path / "tokenizer"
        if run_config:
            prep = Preprocess.from_run_config(run_config, model.config)
            log.info("preprocessing from %s: %s", run_config, prep)
        else:
            prep = Preprocess.for_model(model.config)
        if saved_tokenizer.is_dir():
            prep = prep.with_tokenizer(str(saved_tokenizer))
        return cls(model, prep, device, source=str(path.resolve()))

    @property
    def num_frames(self) -> int:
        return self.prep.num_frames

    @property
    def dim(self) -> int:
        return self.config.projection_dim

    # ------------------------------------------------------------------------------------ embeddings

    @torch.inference_mode()
    def embed_clips(self, clips: torch.Tensor) -> np.ndarray:
        """uint8 clips [B, T, 3, res, res] (Preprocess.clip) -> unit vectors [B, D] float32."""
        video = normalize_video(clips.to(self.device, non_blocking=True), self.prep.options.mean, self.prep.options.std)
        return _unit(self.model.encode_video(video))

    @torch.inference_mode()
    def embed_texts(self, captions: list[str], batch_size: int = 256) -> np.ndarray:
        """Captions -> unit vectors [N, D] float32."""
        if isinstance(captions, str):
            raise TypeError("embed_texts takes a list of captions; wrap a single caption in a list")
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(captions), batch_size):
            tokens = tokenize(self.tokenizer, captions[start : start + batch_size], self.prep.options.max_text_length)
            tokens = {k: v.to(self.device) for k, v in tokens.items()}
            out.append(_unit(self.model.encode_text(tokens["input_ids"], tokens["attention_mask"])))
        return np.concatenate(out)

    def embed_video_file(self, path: str | Path, stored_frames: int = STORED_FRAMES) -> np.ndarray:
        """One video file (anything FFmpeg reads) -> unit vector [D].

        Like make-shards + the evaluation loader: K = `stored_frames` segment midpoints are decoded, then
        T of them picked uniformly, so the vector equals the one indexed from shards made with that K.
        """
        return self.embed_clips(self.prep.clip(read_video_frames(path, stored_frames))[None])[0]

    def embed_frames_folder(self, folder: str | Path) -> np.ndarray:
        """A folder of frame images (name order = time order) as one clip -> unit vector [D]."""
        paths = _image_files(folder)
        picked = [paths[i] for i in frame_indices(len(paths), self.num_frames, "uniform")]
        return self.embed_clips(self.prep.clip(np.stack([read_image(p) for p in picked]))[None])[0]

    def embed_images(self, paths: list[str | Path], batch_size: int = 32) -> np.ndarray:
        """Each image as a one-frame sample (as CC-3M images are in training) -> unit vectors [N, D]."""
        out = [np.zeros((0, self.dim), np.float32)]
        image_prep = dataclasses.replace(self.prep, num_frames=1)
        for start in range(0, len(paths), batch_size):
            clips = [image_prep.clip(read_image(p)[None]) for p in paths[start : start + batch_size]]
            out.append(self.embed_clips(torch.stack(clips)))
        return np.concatenate(out)

    # ------------------------------------------------------------------------------------ ranking

    def rank_captions(self, video: np.ndarray, captions: list[str]) -> list[tuple[str, float]]:
        """Captions sorted by cosine similarity to one video embedding, best first."""
        scores = self.embed_texts(captions) @ np.asarray(video, np.float32)
        return [(captions[i], float(scores[i])) for i in np.argsort(-scores, kind="stable")]

    def rank_videos(self, caption: str, videos: dict[str, np.ndarray]) -> list[tuple[str, float]]:
        """{name: video embedding} sorted by cosine similarity to one caption, best first."""
        names = list(videos)
        matrix = np.stack([np.asarray(videos[n], np.float32) for n in names])
        scores = matrix @ self.embed_texts([caption])[0]
        return [(names[i], float(scores[i])) for i in np.argsort(-scores, kind="stable")]


def _unit(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy()


def read_video_frames(path: str | Path, num_frames: int) -> np.ndarray:
    """uint8 [T, H, W, 3]: the middle frame of each of T equal segments, decoded as make-shards does."""
    try:
        decoded = decode_sample(str(path), "video", FrameSpec(frames=num_frames))
    except SampleError as e:
        raise ValueError(f"cannot read video {path}: {e}") from None
    return decode_frames(decoded.jpegs)


def read_image(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3], short side resized as the shards store it."""
    try:
        decoded = decode_sample(str(path), "image", FrameSpec(frames=1))
    except SampleError as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    return decode_frames(decoded.jpegs)[0]


def _image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of frames")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths
