"""TensorBoard scalars, written by rank 0 only (other ranks get a writer that does nothing).

Tags (docs/TRAINING.md):
    train/loss/<dataset>, train/loss_total, train/lr,
    perf/samples_per_s, perf/samples_per_s_per_device, perf/data_wait_fraction, perf/step_time_s,
    perf/memory_gb, eval/<dataset>/<metric> (t2v_R1 ... v2t_MeanR, val_loss)
"""

from __future__ import annotations

from pathlib import Path


class ScalarWriter:
    def __init__(self, log_dir: Path | None):
        self._writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            # purging events newer than a resumed step keeps the curve of a resumed run free of duplicates
            self._writer = SummaryWriter(str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
