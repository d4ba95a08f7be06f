"""Distributed set-up: the ONE place that reads the launcher's rank variables.

Three launchers are supported, all ending in a torch.distributed process group (env:// rendezvous):
- `deepspeed launch/train.py ...` and `torchrun ...` export RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR /
  MASTER_PORT themselves;
- SLURM's `srun` (one task per device) exports SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS /
  SLURM_JOB_NODELIST / SLURM_JOB_ID; the master is the first host of the node list and the port is derived
  from the job id, so every task computes the same address without talking to the others;
- a bare `python launch/train.py` is a world of one.

The backend is NCCL when CUDA is available and gloo otherwise. The process group is created with a timeout
so that a collective waiting on a dead rank raises instead of hanging forever.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import socket
from dataclasses import dataclass
from typing import Mapping

from pipeline.train.deepspeed_internals import skip_shm_comm_build

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0  # 10 minutes: longer than any checkpoint save, short enough to free a dead job
SLURM_PORT_BASE = 20000  # ports 20000-39999, derived from the job id (stay below Linux's ephemeral range)
SLURM_PORT_SPAN = 20000


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, as the launcher described it."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" (also deepspeed's launcher), "slurm" or "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_slurm_host(nodelist: str) -> str:
    """The first host name of a SLURM host list such as 'gpu[003-005,9],cpu1' -> 'gpu003' (no scontrol needed)."""
    nodelist = nodelist.strip()
    match = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if not match or not nodelist:
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot read a host name from it")
    prefix, _, ranges = match.groups()
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]  # zero padding is part of the text, keep it
    return prefix + first


def slurm_master_port(job_id: str) -> int:
    """A port every task of a job derives identically; two jobs on one node rarely collide."""
    digits = re.sub(r"\D", "", job_id or "")
    if not digits:
        raise ValueError(
            f"SLURM_JOB_ID={job_id!r}: a numeric job id is needed to derive MASTER_PORT "
            "(or export MASTER_PORT yourself)"
        )
    return SLURM_PORT_BASE + int(digits[-6:]) % SLURM_PORT_SPAN


def read_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read the launcher's variables. RANK/WORLD_SIZE win over SLURM_* (torchrun inside an allocation)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing and int(env["WORLD_SIZE"]) > 1:
            raise RuntimeError(
                f"RANK and WORLD_SIZE are set but {', '.join(missing)} is not: "
                "launch with deepspeed, torchrun or srun, or export them"
            )
        return DistEnv(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
            world_size=int(env["WORLD_SIZE"]),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 0)) or free_port(),
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        master_addr = env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_JOB_NODELIST", ""))
        master_port = (
            int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else slurm_master_port(env.get("SLURM_JOB_ID", ""))
        )
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            world_size=int(env["SLURM_NTASKS"]),
            master_addr=master_addr,
            master_port=master_port,
            launcher="slurm",
        )
    return DistEnv(
        rank=0, local_rank=0, world_size=1, master_addr="127.0.0.1", master_port=free_port(), launcher="single"
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for single-process runs and tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_for(env: DistEnv):
    """cuda:<local_rank> when CUDA is available, else cpu."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(env: DistEnv, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Create the process group for `env` (gloo on CPU, NCCL on GPU) through DeepSpeed's comm layer."""
    import deepspeed
    import torch

    # DeepSpeed's env:// rendezvous reads these; export what srun (or a single process) did not set.
    os.environ.update(
        RANK=str(env.rank),
        LOCAL_RANK=str(env.local_rank),
        WORLD_SIZE=str(env.world_size),
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=str(env.master_port),
    )
    # With async error handling a NCCL collective that outlives the timeout aborts the process.
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    skip_shm_comm_build()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    log.info(
        "rank %d/%d (local %d, %s launcher): %s rendezvous at %s:%d",
        env.rank,
        env.world_size,
        env.local_rank,
        env.launcher,
        backend,
        env.master_addr,
        env.master_port,
    )
    deepspeed.init_distributed(
        dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=datetime.timedelta(seconds=timeout_s)
    )


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
