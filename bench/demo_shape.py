"""How fast can the demo's ViT learn the four shapes, and what in the demo data slows it down?

    python3 bench/demo_shape.py upright 0 1000          # angle design seed steps; the demo's data (fit-demo/3)
    python3 bench/demo_shape.py free 0 1000             # angles uniform over the full turn (fit-demo/2)
    python3 bench/demo_shape.py upright-small 0 1000    # near upright, the smaller shapes of fit-demo/2
    python3 bench/demo_shape.py free-small 0 1000       # both as in fit-demo/2

Supervised, so the text side and the contrastive loss are out of the picture: the demo's video model
(SpaceTimeTransformer: 64 px, patch 16, width 128, depth 3, 4 heads, num_frames 1) plus a linear head
classifies the shape of demo images (pipeline.demo.scenes rendered at 64 px: shape, colour, background,
position, size, angle as the demo draws them), AdamW 3e-4, batch 64, 6000 training images, 512 held-out
images from another seed. Prints held-out accuracy (chance 0.25) every 250 steps. Figures: docs/DEMO.md.
"""

import dataclasses
import math
import sys
import time

import numpy as np
import torch

from models.video_transformer import SpaceTimeTransformer
from pipeline.data.transforms import normalize_video
from pipeline.demo import scenes as demo

RES = 64
OLD_HALF_SIZE = (0.10, 0.135)  # fit-demo/2


def variant(scene: demo.Scene, design: str, rng: np.random.Generator) -> demo.Scene:
    """The demo's scene with fit-demo/2's angle and/or size where the design asks for them."""
    if design.startswith("free"):
        scene = dataclasses.replace(scene, angle=float(rng.uniform(0, 2 * math.pi)), angle_offset=0.0)
    if design.endswith("small"):
        half = RES * math.exp(rng.uniform(math.log(OLD_HALF_SIZE[0]), math.log(OLD_HALF_SIZE[1])))
        scene = dataclasses.replace(scene, half_size=half)  # smaller than the demo's: still in frame
    return scene


def dataset(design: str, seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng([seed, 7])
    scenes = [variant(s, design, rng) for s in demo.plan_scenes(seed, "images", count, RES)]
    times = np.zeros(1)
    frames = np.stack([demo.render_frames(s, RES, times)[0] for s in scenes])  # [N, H, W, 3] uint8
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)[:, None]  # [N, 1, 3, H, W]
    y = torch.tensor([demo.SHAPES.index(s.shape) for s in scenes])
    return normalize_video(video), y


def main(design: str, seed: int, steps: int) -> None:
    if design not in ("upright", "free", "upright-small", "free-small"):
        raise SystemExit(f"unknown design {design!r}: upright, free, upright-small or free-small")
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    train_x, train_y = dataset(design, seed, 6000)
    test_x, test_y = dataset(design, seed + 1000, 512)
    model = SpaceTimeTransformer(
        img_size=RES, patch_size=16, embed_dim=128, depth=3, num_heads=4, mlp_ratio=2.0, num_frames=1
    )
    head = torch.nn.Linear(128, len(demo.SHAPES))
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=3e-4, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    started = time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(len(train_x), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(head(model(train_x[idx])), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                acc = (head(model(test_x)).argmax(-1) == test_y).float().mean().item()
            model.train()
            progress = f"{design} seed {seed} step {step}: loss {loss.item():.3f} held-out accuracy {acc:.3f}"
            print(f"{progress} ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
