"""launch/train.py with an exception injected into the data path (tests/test_train_faults.py).

    python tests/train_with_fault.py BATCHES --config ... [--set ...]

On rank 0 the loader's reader raises RuntimeError("injected data-path fault") when asked for its BATCHES-th
batch, inside the DataLoader worker (a fork of this process, so the patch is inherited); other ranks run clean.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.train import main  # noqa: E402
from pipeline.data import streams  # noqa: E402
from pipeline.train.distributed import read_env  # noqa: E402


def inject(after_batches: int) -> None:
    make_batch, calls = streams.DatasetReader.make_batch, [0]

    def failing_make_batch(self, samples):
        calls[0] += 1
        if calls[0] >= after_batches:
            raise RuntimeError("injected data-path fault")
        return make_batch(self, samples)

    streams.DatasetReader.make_batch = failing_make_batch


if __name__ == "__main__":
    if read_env().rank == 0:
        inject(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
