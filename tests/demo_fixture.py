"""A pytest fixture with small trained demo weights and the held-out demo shards (docs/DEMO.md).

    from demo_fixture import trained_demo   # noqa: F401  (then take `trained_demo` as a test argument)

    def test_search(trained_demo):
        trained_demo.weights["4f"], trained_demo.test_shards, trained_demo.test_rows ...

It runs the real first command (`pipeline.demo.run.run_demo`: demo data -> launch/train.py 1-frame ->
launch/train.py 4-frame from the inflated 1-frame weights -> launch/evaluate.py) at test sizes: 192
training clips and 96 images at 64 px, 150 + 6 steps on 2 ranks. Once per test session, about 2-3
minutes on 2 quiet cores (3-4 on the shared development machine). These weights have learned colour and
shape, not motion (that needs the full
`make demo`); the held-out set is the full one: every (shape, colour, motion) once, 192 clips, with
canonical captions such as "a red square moves to the left".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

# Test sizes: the smallest that still trains both stages through the real launchers.
QUICK_DATA = {"train_clips": 192, "images": 96, "size": 64, "stored_frames": 8}
QUICK_SETS = {
    "1f": [
        "optim.total_steps=150",
        "optim.warmup_steps=10",
        "data.train[0].batch_size=16",
        "data.train[1].batch_size=16",
        "data.options.shuffle_buffer=64",
        "log.every_steps=10",
    ],
    "4f": [
        "optim.total_steps=6",
        "optim.warmup_steps=1",
        "data.train[0].batch_size=8",
        "data.train[1].batch_size=8",
        "data.options.shuffle_buffer=32",
        "log.every_steps=2",
    ],
}


@dataclass
class TrainedDemo:
    out: Path  # the run folder (data/, demo_1f/, demo_4f/, eval/, logs/, results.json)
    weights: dict  # {"1f": weights folder, "4f": weights folder} (models.load_pretrained)
    configs: dict  # {"1f": config.json, "4f": config.json} as the trainer wrote them
    test_shards: Path  # make-shards folder of the held-out clips (manifest.json inside)
    train_shards: Path
    test_rows: list  # rows of data/test.csv: key, caption, shape, colour, motion, held_out
    results: dict  # results.json


def build_trained_demo(out: Path) -> TrainedDemo:
    from pipeline.demo.render import DemoSpec, read_table
    from pipeline.demo.run import DemoOptions, run_demo, stage_dir

    results_file = out / "results.json"
    if not results_file.is_file():
        run_demo(
            DemoOptions(
                checkout=Path(__file__).resolve().parents[1],
                out=out,
                seed=0,
                data=DemoSpec(**QUICK_DATA),
                overrides=QUICK_SETS,
                progress=False,
            )
        )
    results = json.loads(results_file.read_text())
    return TrainedDemo(
        out=out,
        weights={s: stage_dir(out, s) / "weights" / "final" for s in ("1f", "4f")},
        configs={s: stage_dir(out, s) / "config.json" for s in ("1f", "4f")},
        test_shards=out / "data" / "shards" / "test",
        train_shards=out / "data" / "shards" / "train",
        test_rows=read_table(out / "data" / "test.csv"),
        results=results,
    )


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory) -> TrainedDemo:
    return build_trained_demo(tmp_path_factory.mktemp("trained_demo"))
