"""Retrieval evaluation of a model on evaluation shards (during training and in launch/evaluate.py).

For each evaluation dataset: embed every video (optionally averaging a test-time sliding window of clips,
docs/ORIGINAL.md, 'Test-time evaluation') and its captions on every rank, gather the embeddings, drop
duplicate keys (a loader may repeat samples to give every rank equal batches), then on every rank compute

- the retrieval metrics of `pipeline.train.metrics` on the cosine similarity of all captions x all videos (the
  captions a sample gives are its dataset's queries: `caption_mode` "primary" one, "all" every caption,
  "paragraph" its captions joined; docs/TRAINING.md, 'Benchmarks'), and
- `val_loss`: the mean NormSoftmax loss over consecutive batches of `batch_size` videos (primary captions,
  videos ordered by key, so the value does not depend on the number of ranks), as the original's
  `val_loss_{dl}`.

Every rank runs the same number of forward passes (ranks that run out of batches repeat their last one and
discard the result), since a ZeRO-3 forward is a collective.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from models.loss import norm_softmax_loss
from pipeline.data.loader import build_eval_loader
from pipeline.data.tokenize import load_tokenizer, tokenize
from pipeline.data.transforms import normalize_video
from pipeline.train.metrics import cosine_similarity, retrieval_metrics

log = logging.getLogger(__name__)


def sliding_windows(video: torch.Tensor, window_frames: int, stride: int) -> list[torch.Tensor]:
    """Clips of `window_frames` frames from video [B, L, ...] holding L = window_frames * m frames.

    The L loaded frames are the middles of L equal segments of the clip; grouped into `window_frames` runs
    of m, window o takes frame o of every run (offsets 0, stride, 2*stride, ... < m): the original's
    "segment start + offset" windows, on the stored frames.
    """
    loaded = video.shape[1]
    if loaded % window_frames:
        raise ValueError(
            f"sliding window: {loaded} loaded frames are not a multiple of eval.window_frames="
            f"{window_frames}; set the eval dataset's num_frames to a multiple of it"
        )
    per_run = loaded // window_frames
    return [video[:, offset::per_run] for offset in range(0, per_run, stride)]


def _lockstep(batches: Iterable[dict], world_size: int, device, pad: bool) -> Iterator[tuple[dict, bool]]:
    """Yield (batch, real); with `pad`, until every rank is out of batches (exhausted ranks repeat their last)."""
    iterator, last = iter(batches), None
    while True:
        batch = next(iterator, None)
        if pad and world_size > 1:
            flag = torch.tensor([0 if batch is None else 1], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() == 0:
                return
            if batch is None:
                if last is None:
                    raise RuntimeError(
                        "this rank's evaluation loader yielded no batch at all while others did; "
                        "give the evaluation set at least one batch per rank"
                    )
                yield last, False
                continue
        elif batch is None:
            return
        last = batch
        yield batch, True


def _gather(obj, world_size: int) -> list:
    if world_size == 1:
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def embed_dataset(
    model: Callable,
    batches: Iterable[dict],
    *,
    prepare_video: Callable,
    tokenize: Callable,
    world_size: int,
    device,
    window_frames: int = 0,
    stride: int = 0,
    lockstep: bool = False,
) -> dict:
    """Embeddings of every sample on every rank: {keys, video [N, D], text [C, D], caption_video [C], primary [N]}.

    `model(video, input_ids, attention_mask) -> (text_emb, video_emb)`; `prepare_video(uint8) -> float input`;
    `tokenize(list[str]) -> {input_ids, attention_mask}` for batches with several captions per video (otherwise
    the batch's tokenized caption is used). `lockstep`: every rank runs the same number of forwards (ZeRO-3).
    """
    keys, videos, texts, owners = [], [], [], []
    for batch, real in _lockstep(batches, world_size, device, lockstep):
        video = prepare_video(batch["video"].to(device, non_blocking=True))
        captions = batch.get("captions")
        if captions is not None and any(len(caps) != 1 for caps in captions):  # several captions per video
            for key, caps in zip(batch["keys"], captions):
                if not caps:
                    raise ValueError(f"evaluation sample {key!r} has no caption to score")
            text = tokenize([c for caps in captions for c in caps])
            owner = [i for i, caps in enumerate(captions) for _ in caps]
        else:
            text, owner = batch["text"], list(range(video.shape[0]))
        ids, mask = text["input_ids"].to(device), text["attention_mask"].to(device)
        clips = sliding_windows(video, window_frames, stride) if stride else [video]
        # one forward per clip: the text tower is cheap next to the video tower and ZeRO-3 wants whole forwards
        outputs = [model(clip, ids, mask) for clip in clips]
        if not real:
            continue
        text_emb = outputs[0][0].float()
        video_emb = torch.stack([out[1].float() for out in outputs]).mean(0)  # mean of clip embeddings
        base = len(keys)
        keys.extend(batch["keys"])
        videos.append(video_emb.cpu().numpy())
        texts.append(text_emb.cpu().numpy())
        owners.extend(base + o for o in owner)
    local = {"keys": keys, "video": _cat(videos), "text": _cat(texts), "owner": np.asarray(owners, np.int64)}
    return _merge(_gather(local, world_size))


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _merge(parts: list[dict]) -> dict:
    """Concatenate the ranks' embeddings, keeping the first occurrence of each key, videos sorted by key."""
    first: dict[str, tuple[int, int]] = {}
    for r, part in enumerate(parts):
        for i, key in enumerate(part["keys"]):
            first.setdefault(key, (r, i))
    keys = sorted(first)
    index = {key: n for n, key in enumerate(keys)}
    if not keys:
        raise ValueError("the evaluation set is empty")
    video = np.stack([parts[r]["video"][i] for r, i in (first[k] for k in keys)])
    texts, caption_video, primary = [], [], np.full(len(keys), -1, np.int64)
    for r, part in enumerate(parts):
        for row, owner in enumerate(part["owner"]):
            key = part["keys"][owner]
            if first[key] != (r, owner):
                continue  # a repeated sample: its captions are already in
            if primary[index[key]] < 0:
                primary[index[key]] = len(texts)
            texts.append(part["text"][row])
            caption_video.append(index[key])
    return {
        "keys": keys,
        "video": video,
        "text": np.stack(texts),
        "caption_video": np.asarray(caption_video),
        "primary": primary,
    }


def val_loss(video: np.ndarray, text: np.ndarray, batch_size: int, loss_from_sims: Callable) -> float:
    """Mean loss over consecutive batches of `batch_size` (video, primary caption) pairs."""
    losses = []
    for start in range(0, len(video), batch_size):
        sims = torch.from_numpy(cosine_similarity(text[start : start + batch_size], video[start : start + batch_size]))
        losses.append(float(loss_from_sims(sims)))
    return float(np.mean(losses))


def score(embeddings: dict, batch_size: int, loss_from_sims: Callable) -> dict[str, float]:
    """Retrieval metrics + val_loss + the number of videos and captions scored."""
    sims = cosine_similarity(embeddings["text"], embeddings["video"])
    metrics = retrieval_metrics(sims, embeddings["caption_video"])
    metrics["val_loss"] = val_loss(
        embeddings["video"], embeddings["text"][embeddings["primary"]], batch_size, loss_from_sims
    )
    metrics["num_videos"] = len(embeddings["keys"])
    metrics["num_captions"] = len(embeddings["caption_video"])
    return metrics


def evaluate_datasets(model: Callable, loaders: dict[str, tuple[Iterable[dict], int]], **kwargs) -> dict[str, dict]:
    """{dataset: metrics} for {dataset: (batches, batch_size)}; kwargs as embed_dataset + loss_from_sims."""
    loss_from_sims = kwargs.pop("loss_from_sims")
    results = {}
    for name, (batches, batch_size) in loaders.items():
        started = time.time()
        embeddings = embed_dataset(model, batches, **kwargs)
        results[name] = score(embeddings, batch_size, loss_from_sims)
        log.info(
            "eval %s: %d videos, %d captions in %.1f s: t2v R1 %.2f R5 %.2f R10 %.2f MedR %.1f | v2t R1 %.2f "
            "R5 %.2f R10 %.2f MedR %.1f | val_loss %.4f",
            name,
            results[name]["num_videos"],
            results[name]["num_captions"],
            time.time() - started,
            *(results[name][f"{d}_{m}"] for d in ("t2v", "v2t") for m in ("R1", "R5", "R10", "MedR")),
            results[name]["val_loss"],
        )
    return results


def evaluate_run(
    model: Callable,
    cfg,
    env,
    device,
    dtype: torch.dtype,
    temperature: float,
    lockstep: bool = False,
    loaders: dict | None = None,
) -> dict[str, dict]:
    """Evaluate on every `data.eval` dataset of run config `cfg` (what training and launch/evaluate.py share).

    `loaders`: {dataset: (batches, batch_size)} to use instead of the config's evaluation shards.
    """
    if loaders is None:
        loaders = {
            spec.name: (build_eval_loader(spec, cfg.data.options, env.rank, env.world_size), spec.batch_size)
            for spec in cfg.data.eval
        }
    tokenizer = load_tokenizer(cfg.data.options.tokenizer)
    return evaluate_datasets(
        model,
        loaders,
        prepare_video=lambda v: normalize_video(v, cfg.data.options.mean, cfg.data.options.std).to(dtype),
        tokenize=lambda texts: tokenize(tokenizer, texts, cfg.data.options.max_text_length),
        world_size=env.world_size,
        device=device,
        window_frames=cfg.eval.window_frames,
        stride=cfg.eval.sliding_window_stride,
        lockstep=lockstep,
        loss_from_sims=lambda sims: norm_softmax_loss(sims, temperature),
    )


def flatten(results: dict[str, dict]) -> dict[str, float]:
    """{"msrvtt/t2v_R1": ...} for TensorBoard and best-model selection."""
    return {f"{name}/{metric}": value for name, metrics in results.items() for metric, value in metrics.items()}
