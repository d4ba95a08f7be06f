"""Clip augmentation on uint8 frames (one crop and flip for every frame of a clip) and device-side normalisation.

As the original (docs/ORIGINAL.md, 'Transforms'): train = RandomResizedCrop(224, scale (0.5, 1), ratio
(3/4, 4/3), bilinear) + horizontal flip p=0.5; eval = Resize(256) short side, CenterCrop(256), Resize(224).
The original applied torchvision's tensor transforms to the whole [T, C, H, W] clip, so one crop and one flip
served all frames; we keep that.

Differences, on purpose:
- Frames stay uint8 until the device: the loader ships [B, T, 3, H, W] uint8 (4x less than float32 through
  worker queues and host-to-device copies) and `normalize_video` runs on the accelerator.
- Eval fuses Resize(256) + CenterCrop(256) + Resize(224) into one crop of the source and one resample:
  Resize then CenterCrop to the same size keeps the centred square of the short side, so only the final
  resample changes, and stored frames already have short side 256 where the first resize was a no-op.
- Crop parameters come from an explicit numpy Generator (seeded per sample by the loader), not torch's
  global RNG, so augmentation is reproducible across workers and resumes.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.options import IMAGENET_MEAN, IMAGENET_STD


def random_resized_crop_box(
    height: int, width: int, rng: np.random.Generator, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering `scale` of the area with aspect ratio in `ratio`.

    Same algorithm as torchvision's RandomResizedCrop.get_params: 10 tries, then a centre crop clamped to
    the ratio range.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop_box(height: int, width: int, resize: int, crop: int) -> tuple[int, int, int, int]:
    """The source box that Resize(resize, short side) then CenterCrop(crop) keeps."""
    side = min(height, width) * crop / resize
    h, w = min(height, round(side)), min(width, round(side))
    return (height - h) // 2, (width - w) // 2, h, w


def crop_resize(frames: np.ndarray, box: tuple[int, int, int, int], res: int, flip: bool = False) -> torch.Tensor:
    """Crop the same box out of every frame [T, H, W, 3] uint8, resize to res x res -> uint8 [T, 3, res, res]."""
    top, left, h, w = box
    clip = torch.from_numpy(frames[:, top : top + h, left : left + w]).permute(0, 3, 1, 2)  # [T, 3, h, w] channels-last
    if (h, w) != (res, res):
        # uint8 bilinear with antialias has a fast channels-last kernel (what torchvision's Resize uses)
        clip = F.interpolate(clip, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
    if flip:
        clip = clip.flip(-1)
    return clip.contiguous()


def train_clip(
    frames: np.ndarray,
    rng: np.random.Generator,
    res: int = 224,
    scale=(0.5, 1.0),
    ratio=(3 / 4, 4 / 3),
    flip_p: float = 0.5,
) -> torch.Tensor:
    """Training augmentation: one RandomResizedCrop box and one flip decision for all frames of the clip."""
    box = random_resized_crop_box(frames.shape[1], frames.shape[2], rng, scale, ratio)
    return crop_resize(frames, box, res, flip=bool(rng.random() < flip_p))


def eval_clip(frames: np.ndarray, res: int = 224, resize: int = 256, crop: int = 256) -> torch.Tensor:
    """Evaluation transform: centred crop (Resize(resize) + CenterCrop(crop)) resampled to res x res."""
    return crop_resize(frames, center_crop_box(frames.shape[1], frames.shape[2], resize, crop), res)


def normalize_video(video: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 (x / 255 - mean) / std, on whatever device `video` is on."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=video.device).view(3, 1, 1) * 255.0
    std_t = torch.tensor(std, dtype=torch.float32, device=video.device).view(3, 1, 1) * 255.0
    return (video.float() - mean_t) / std_t
