"""Can the space-time ViT learn which way a square moves? Zero vs random new temporal-embedding rows.

    python3 bench/demo_temporal.py zeros 0 300          # mode seed steps; prints accuracy every 50 steps
    python3 bench/demo_temporal.py randtemp 0 300       # all rows ~ N(0, 0.02^2) (truncated)
    python3 bench/demo_temporal.py row0zero 0 300       # as the demo's 4-frame start: row 0 kept, rows 1..3 random
    python3 bench/demo_temporal.py randtemp_spatial 0 300   # + time_init "spatial"

A 4x4 white square on black steps 4 px left or right per frame over 4 frames (32 px); every single frame is
as likely under either label, so only the frame order tells. Figures: docs/DEMO.md.
"""

import sys
import time

import numpy as np
import torch

from models.video_transformer import SpaceTimeTransformer, init_time_attention_all_

RES, PATCH, T = 32, 8, 4


def batch(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    video = np.zeros((n, T, 3, RES, RES), np.float32)
    label = rng.integers(0, 2, n)
    for i in range(n):
        x0, y = rng.uniform(8, 24), int(rng.uniform(4, 24))
        for t in range(T):
            x = max(0, min(RES - 4, int(x0 + (4 if label[i] else -4) * (t - 1.5))))
            video[i, t, :, y : y + 4, x : x + 4] = 1.0
    return torch.from_numpy(video), torch.from_numpy(label)


def main(mode: str, seed: int, steps: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = SpaceTimeTransformer(
        img_size=RES, patch_size=PATCH, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2, num_frames=T
    )
    if "spatial" in mode:
        init_time_attention_all_(model, "spatial")
    if "row0zero" in mode or "randtemp" in mode:
        torch.nn.init.trunc_normal_(model.temporal_embed, std=0.02)
    if "row0zero" in mode:
        with torch.no_grad():
            model.temporal_embed[:, 0] = 0
    head = torch.nn.Linear(64, 2)
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-3)
    rng = np.random.default_rng(0)
    started = time.time()
    for step in range(steps):
        video, label = batch(64, rng)
        loss = torch.nn.functional.cross_entropy(head(model(video)), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:
            with torch.no_grad():
                video, label = batch(256, rng)
                accuracy = (head(model(video)).argmax(1) == label).float().mean().item()
            norms = [round(v, 4) for v in model.temporal_embed.norm(dim=-1).squeeze().tolist()]
            print(
                f"{mode} seed {seed} step {step + 1}: loss {loss.item():.3f} accuracy {accuracy:.3f} "
                f"temporal row norms {norms} ({time.time() - started:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
