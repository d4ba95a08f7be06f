"""Shared by the trainer tests and bench/bench_train.py: tiny assets, launching ranks, a synthetic loader.

- `make_tiny_assets(root)`: a tiny random text model folder and fit-shards/1 shards (images, videos, an
  evaluation set with two captions per video) matching configs/tiny_*.json; returns the `--set` overrides.
- `launch_ranks(...)`: start N `launch/train.py` processes the way srun does (rank variables in the
  environment, a port chosen free at run time); `wait_all` never leaves a process behind.
- `python tests/test_train_fixtures.py synthetic --config C --out O`: train with `SyntheticSteps`, a loader
  whose global batch at each step is fixed by the seed and cut into rank slices, so a 2-rank run and a
  1-rank run with the whole batch see exactly the same samples (the real loader splits shards by rank).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def make_tiny_assets(root: Path) -> list[str]:
    """Text model + shards for configs/tiny_*.json under `root` (kept if present; the same assets as
    `make tiny-assets`, pipeline/demo/tiny_assets.py); returns the `--set` overrides pointing the configs at them."""
    from pipeline.demo.tiny_assets import write_tiny_assets

    return write_tiny_assets(root).overrides()


def free_port() -> int:
    from pipeline.train.distributed import free_port as pick

    return pick()


def launch_ranks(
    args: list[str], world_size: int, log_dir: Path, script: str = "launch/train.py", extra_env: dict | None = None
) -> list[subprocess.Popen]:
    """Start `world_size` processes of `python script args` with srun-style rank variables."""
    port = free_port()
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in range(world_size):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
            DS_ACCELERATOR="cpu",
            PYTHONPATH=str(REPO),
            **(extra_env or {}),
        )
        out = open(log_dir / f"rank{rank}.log", "ab")
        procs.append(
            subprocess.Popen(
                [sys.executable, str(REPO / script), *args],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        out.close()
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    """Exit codes; on timeout every process still running is killed (no leftovers) and TimeoutError raised."""
    deadline = time.time() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"ranks still running after {timeout} s") from None
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [p.returncode for p in procs]


def read_log(log_dir: Path, rank: int = 0) -> str:
    return (Path(log_dir) / f"rank{rank}.log").read_text(errors="replace")


def tb_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "weights.safetensors"))


class SyntheticSteps:
    """Endless steps {name: batch}; the global batch of step s is a function of (seed, s), cut by rank."""

    def __init__(
        self,
        batch_sizes: dict[str, int],
        frames: dict[str, int],
        rank: int,
        world_size: int,
        seed: int = 0,
        res: int = 32,
        text_len: int = 8,
        vocab: int = 1000,
    ):
        self.batch_sizes, self.frames, self.rank, self.world = batch_sizes, frames, rank, world_size
        self.seed, self.res, self.text_len, self.vocab = seed, res, text_len, vocab
        self.steps = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        out = {}
        for n, (name, per_rank) in enumerate(self.batch_sizes.items()):
            g = torch.Generator().manual_seed(self.seed * 100003 + self.steps * 101 + n)
            total = per_rank * self.world
            video = torch.randint(
                0, 256, (total, self.frames[name], 3, self.res, self.res), generator=g, dtype=torch.uint8
            )
            ids = torch.randint(1000, 1000 + self.vocab, (total, self.text_len), generator=g)
            ids[:, 0] = 101
            mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
            out[name] = {
                "video": video[mine],
                "keys": [f"{name}_{self.steps}_{i}" for i in range(total)][mine],
                "text": {"input_ids": ids[mine], "attention_mask": torch.ones_like(ids[mine])},
            }
        self.steps += 1
        return out

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


def _synthetic_main(argv: list[str]) -> int:
    """Train `--config` (with `--set` overrides) on SyntheticSteps; ranks come from the environment."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    from foundation.logs import setup_logging
    from pipeline.train.config import load_config
    from pipeline.train.distributed import init_distributed, read_env, shutdown
    from pipeline.train.trainer import train

    env = read_env()
    setup_logging(rank=env.rank)
    cfg = load_config(args.config, args.overrides)
    init_distributed(env, timeout_s=60)
    loader = SyntheticSteps(
        {s.name: s.batch_size for s in cfg.data.train},
        {s.name: s.num_frames for s in cfg.data.train},
        env.rank,
        env.world_size,
        seed=cfg.seed,
        res=cfg.data.options.input_res,
    )
    try:
        return train(cfg, env, train_loader=loader)
    finally:
        shutdown()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "synthetic":
        sys.exit(_synthetic_main(sys.argv[2:]))
    sys.exit("usage: python tests/test_train_fixtures.py synthetic --config C [--set k=v ...]")
