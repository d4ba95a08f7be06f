"""The private DeepSpeed attributes this project sets, all here, so a DeepSpeed upgrade has one file to check.

Each is used because DeepSpeed 0.19 has no public setting for it; the comment at each says what it does.
DeepSpeed is imported inside the functions: it is heavy, and its import alone must not be paid by callers
that only need the names.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


def skip_shm_comm_build() -> None:
    """Keep DeepSpeed from building its shared-memory all-reduce op when the process group is set up."""
    import deepspeed

    # The CPU accelerator otherwise JIT-builds this op (~80 s), which only inference all-reduce uses.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


@contextlib.contextmanager
def loading_universal_checkpoint(engine, universal: bool) -> Iterator[None]:
    """`engine.load_checkpoint` inside reads a `ds_to_universal` folder when `universal`, else DeepSpeed's own
    per-rank layout."""
    # engine.load_checkpoint takes the layout from the config given to deepspeed.initialize
    # (checkpoint.load_universal); a resume knows it only once it has picked a folder, so it is set per load.
    engine._config.load_universal_checkpoint = universal
    try:
        yield
    finally:
        engine._config.load_universal_checkpoint = False
