"""The first command end to end at test sizes (tests/demo_fixture.py): the stages chain, the 4-frame stage
starts from the inflated 1-frame weights, metrics are written, and the trained model has learned something
no shuffled captioning can explain."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from demo_fixture import trained_demo  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_stages_chain_and_the_4f_stage_starts_from_inflated_1f_weights(trained_demo):
    from safetensors.torch import load_file

    from models import FrozenInTime
    from models.checkpoint import load_weights_into
    from pipeline.train.config import load_config

    cfg_1f = json.loads(trained_demo.configs["1f"].read_text())
    cfg_4f = json.loads(trained_demo.configs["4f"].read_text())
    assert cfg_1f["model"]["video"]["num_frames"] == 1 and cfg_4f["model"]["video"]["num_frames"] == 4
    start = trained_demo.weights["1f"]
    assert cfg_4f["checkpoint"]["load_checkpoint"] == str(start)
    assert cfg_4f["checkpoint"]["load_temporal_fix"] == "noise"
    std = cfg_4f["checkpoint"]["load_temporal_noise_std"]
    assert (
        cfg_1f["data"]["train"][1]["shards"] == cfg_4f["data"]["train"][1]["shards"] == str(trained_demo.train_shards)
    )
    one = load_file(str(start / "weights.safetensors"))
    four = load_file(str(trained_demo.weights["4f"] / "weights.safetensors"))
    dim = one["video_model.cls_token"].shape[-1]
    assert one["video_model.temporal_embed"].shape == (1, 1, dim)
    assert four["video_model.temporal_embed"].shape == (1, 4, dim)
    log = (trained_demo.out / "logs" / "train_4f.log").read_text()
    assert f"initialising from {start} (temporal fix noise)" in log and f"(noise, std {std:g})" in log
    # what the trainer's load gave the 4-frame stage: every stage-1 tensor carried over, temporal row 0
    # kept, rows 1..3 new and distinct at the configured scale (models.checkpoint.adapt_temporal_embed "noise")
    begin = FrozenInTime(load_config(trained_demo.configs["4f"]).model, init_weights=False)
    load_weights_into(begin, start, "noise", noise_std=std)
    begin = begin.state_dict()
    for key, value in one.items():
        if key != "video_model.temporal_embed":
            assert torch.equal(begin[key], value), key
    rows = begin["video_model.temporal_embed"][0]
    assert torch.equal(rows[0], one["video_model.temporal_embed"][0, 0])
    assert (
        0.5 * std < rows[1:].std() < 1.5 * std
        and torch.cdist(rows[1:], rows[1:]).fill_diagonal_(float("inf")).min() > std
    )
    # and stage 2 trained from there
    assert not torch.equal(four["video_model.patch_embed.proj.weight"], begin["video_model.patch_embed.proj.weight"])


def test_metrics_tables_and_tensorboard_are_written(trained_demo):
    out = trained_demo.out
    for stage in ("1f", "4f"):
        evaluated = json.loads((out / "eval" / f"evaluate_{stage}.json").read_text())["metrics"]["shapes_test"]
        assert evaluated["num_videos"] == evaluated["num_captions"] == 192
        queries = trained_demo.results["stages"][stage]["queries"]
        assert queries["overall"]["R1"] == pytest.approx(evaluated["t2v_R1"])  # two paths, one answer
        assert queries["motion_only"]["queries"] == 192 and queries["motion_only"]["chance"]["R1"] == 12.5
        assert list((out / f"demo_{stage}" / "tb").rglob("events.out.tfevents.*"))
    table = (out / "results.md").read_text()
    assert "motion-only (same shape+colour)" in table and "Learning check" in table
    assert set(trained_demo.results["check"]) >= {"margin", "passed", "motion_only_R1_1f", "motion_only_R1_4f"}


def _embed_training_clips(trained_demo, stage: str):
    from pipeline.data.loader import build_eval_loader
    from pipeline.data.options import DatasetSpec
    from pipeline.data.transforms import normalize_video
    from pipeline.train.checkpoints import load_model
    from pipeline.train.config import load_config

    cfg = load_config(trained_demo.configs[stage])
    spec = DatasetSpec(
        name="train_clips", shards=str(trained_demo.train_shards), batch_size=64, num_frames=cfg.data.eval[0].num_frames
    )
    model = load_model(trained_demo.weights[stage])
    texts, videos = [], []
    with torch.no_grad():
        for batch in build_eval_loader(spec, cfg.data.options, 0, 1):
            video = normalize_video(batch["video"], cfg.data.options.mean, cfg.data.options.std)
            t, v = model(video, batch["text"]["input_ids"], batch["text"]["attention_mask"])
            texts.append(torch.nn.functional.normalize(t, dim=-1))
            videos.append(torch.nn.functional.normalize(v, dim=-1))
    return torch.cat(texts).numpy(), torch.cat(videos).numpy()


@pytest.mark.parametrize("stage", ["1f", "4f"])
def test_trained_model_beats_every_shuffled_captioning_of_the_training_clips(trained_demo, stage):
    """Mean matched-pair similarity of the trained model vs the same statistic with the captions shuffled
    among the clips, 500 times: the true pairing must beat every shuffle (p < 0.002)."""
    text, video = _embed_training_clips(trained_demo, stage)
    sims = text @ video.T
    n = len(sims)
    matched = np.mean(np.diag(sims))
    rng = np.random.default_rng(0)
    shuffled = np.array([np.mean(sims[np.arange(n), rng.permutation(n)]) for _ in range(500)])
    assert matched > shuffled.max(), (matched, shuffled.max())
    # and in retrieval terms: the true clip ranks in the top 10 % far more often than chance (10 %)
    ranks = (sims > np.diag(sims)[:, None]).sum(1)
    assert np.mean(ranks < n // 10) > 0.2


def test_launch_demo_rejects_bad_arguments():
    done = subprocess.run(
        [sys.executable, "-m", "launch.demo", "--train-clips", "0", "--out", "/nonexistent/x"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 2 and "--train-clips" in done.stderr


def test_a_stage_is_reused_only_with_its_config_and_its_data(trained_demo, tmp_path):
    """Re-rendered data lands in the same folders under the same config: the stage must be retrained then."""
    from pipeline.demo.run import DATA_STAMP, stage_is_current

    stamp = json.loads((trained_demo.out / "data" / "demo.json").read_text())
    for stage in ("1f", "4f"):  # run_demo records the data each stage was trained on
        assert json.loads((trained_demo.out / f"demo_{stage}" / DATA_STAMP).read_text()) == stamp
    run = tmp_path / "demo_1f"
    (run / "weights" / "final").mkdir(parents=True)
    (run / "weights" / "final" / "weights.safetensors").write_bytes(b"x")
    config = {"name": "demo_1f", "seed": 0}
    (run / "config.json").write_text(json.dumps(config))
    assert not stage_is_current(run, config, stamp)  # no record of its data
    (run / DATA_STAMP).write_text(json.dumps(stamp))
    assert stage_is_current(run, config, stamp)
    assert not stage_is_current(run, {**config, "seed": 1}, stamp)
    assert not stage_is_current(run, config, {**stamp, "format": "fit-demo/0"})
    (run / "weights" / "final" / "weights.safetensors").unlink()
    assert not stage_is_current(run, config, stamp)


# The same seed must give the same table on any machine of this kind (docs/DEMO.md, "Reproducibility"):
# nothing a caller brings (OMP_NUM_THREADS / MKL_NUM_THREADS, the core count that sets torch's default, a
# busy machine) may change a bit of what the demo computes. A different thread count splits float sums
# differently; 1900 training steps grow that into another model.
CALLER_THREADS = ({"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"})


@pytest.mark.parametrize("nproc", [2, 1])
def test_stage_training_is_bit_identical_whatever_threads_the_caller_sets(trained_demo, tmp_path, monkeypatch, nproc):
    from safetensors.torch import load_file

    from pipeline.demo.run import train_stage

    trained = []
    for i, caller in enumerate(CALLER_THREADS):
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            monkeypatch.delenv(name, raising=False)
        for name, value in caller.items():
            monkeypatch.setenv(name, value)
        run = tmp_path / f"run{i}"
        train_stage(
            trained_demo.configs["1f"],
            [f"output_dir={run}", "optim.total_steps=3", "log.every_steps=1"],
            nproc,
            tmp_path / f"train{i}.log",
            "1f",
            REPO,
        )
        trained.append(load_file(run / "weights" / "final" / "weights.safetensors"))
    first, second = trained
    assert first.keys() == second.keys()
    differ = [name for name in first if not torch.equal(first[name], second[name])]
    assert not differ, f"{len(differ)} of {len(first)} tensors differ between {CALLER_THREADS}: {differ[:5]}"


@pytest.mark.parametrize("stage", ["1f", "4f"])
def test_the_demo_embedding_is_bit_identical_whatever_the_callers_torch_threads(trained_demo, stage):
    from pipeline.demo.run import embed_eval_set

    before = torch.get_num_threads()
    embedded = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            embedded.append(embed_eval_set(trained_demo.weights[stage], trained_demo.configs[stage]))
            assert torch.get_num_threads() == threads  # the caller's count is given back
    finally:
        torch.set_num_threads(before)
    (keys_1, text_1, video_1), (keys_3, text_3, video_3) = embedded
    assert keys_1 == keys_3 == sorted(keys_1) and len(keys_1) == len(trained_demo.test_rows)
    assert np.array_equal(text_1, text_3) and np.array_equal(video_1, video_3)


def test_results_record_what_besides_the_seed_decides_the_numbers():
    """Two tables can only match when these match (docs/DEMO.md, "Reproducibility")."""
    from pipeline.demo.run import THREADS, environment

    env = environment()
    assert env["versions"]["torch"] and torch.__version__.startswith(env["versions"]["torch"])
    assert env["versions"]["numpy"] == np.__version__
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["ffmpeg"].startswith("ffmpeg version") and env["cpu"] and env["threads_per_process"] == THREADS == 1
    json.dumps(env)  # it goes into results.json
