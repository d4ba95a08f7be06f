"""Trainer building blocks without launching ranks: config, launcher variables, schedules, param groups,
checkpoint folders, sliding windows, DeepSpeed config."""

import json

import pytest
import torch

from foundation.preemption import EXIT_PREEMPTED
from foundation.schema import ConfigError
from pipeline.train.checkpoint_format import mark_complete, tag_for_step
from pipeline.train.checkpoints import latest_complete, prune, resolve_resume, resume_candidates
from pipeline.train.config import apply_overrides, load_config
from pipeline.train.distributed import first_slurm_host, read_env, slurm_master_port
from pipeline.train.evaluation import sliding_windows
from pipeline.train.optim import LRSchedule, param_groups
from pipeline.train.trainer import RunPaths, deepspeed_config

TINY = "configs/tiny_1f.json"


def _write(tmp_path, raw):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    return path


def test_configs_in_the_repo_validate():
    for name in ("tiny_1f", "tiny_4f", "pretrain_1f", "pretrain_4f", "finetune_msrvtt_4f"):
        cfg = load_config(f"configs/{name}.json")
        assert cfg.optim.total_steps > 0 and cfg.data.train
    cfg = load_config("configs/pretrain_4f.json")
    assert cfg.checkpoint.load_checkpoint and {s.name: s.num_frames for s in cfg.data.train} == {"cc3m": 1, "webvid": 4}
    # the benchmarks' fine-tuning configs: each evaluates val and test under its protocol, selects on val
    for benchmark, caption_mode in (("lsmdc", "primary"), ("msvd", "all"), ("didemo", "paragraph")):
        cfg = load_config(f"configs/finetune_{benchmark}_4f.json")
        assert [s.shards for s in cfg.data.train] == [f"data/shards/{benchmark}_train"]
        assert {s.name: (s.shards, s.caption_mode) for s in cfg.data.eval} == {
            f"{benchmark}_{split}": (f"data/shards/{benchmark}_{split}", caption_mode) for split in ("val", "test")
        }
        assert cfg.eval.best_metric == f"{benchmark}_val/val_loss" and cfg.checkpoint.load_checkpoint


def test_zero_shot_benchmark_entries_in_the_docs_load_into_the_pretraining_configs():
    """docs/TRAINING.md's `--set 'data.eval=[...]'` for zero-shot checks on all four benchmarks."""
    docs = open("docs/TRAINING.md").read()
    snippet = docs[docs.index("--set 'data.eval=") + len("--set '") :]
    snippet = snippet[: snippet.index("'")]
    for name in ("pretrain_1f", "pretrain_4f"):
        cfg = load_config(f"configs/{name}.json", [snippet])
        assert {s.name: s.caption_mode for s in cfg.data.eval} == {
            "msrvtt_1ka": "primary",
            "lsmdc_test": "primary",
            "msvd_test": "all",
            "didemo_test": "paragraph",
        }
        assert cfg.eval.best_metric == "msrvtt_1ka/t2v_R1"


def test_config_errors_name_the_key_path(tmp_path):
    raw = json.loads(open(TINY).read())
    cases = [
        ("optim.lr=-1", "optim.lr"),
        ("optim.schedule=linear", "optim.schedule"),
        ("data.train[1].batch_size=0", "data.train[1].batch_size"),
        ("deepspeed.zero_stage=4", "zero_stage"),
        ("eval.best_metric=nope/t2v_R1", "eval.best_metric"),
        ("optim.bogus=1", "optim.bogus"),
        ("loss.weights.unknown=1", "loss.weights.unknown"),
        ("deepspeed.extra.gradient_clipping=1", "extra"),
        ("eval.window_frames=8", "eval.window_frames"),
        ("eval.window_frames=3", "data.eval[0].num_frames"),
    ]
    for override, path in cases:
        with pytest.raises(ConfigError, match=path.replace("[", r"\[").replace("]", r"\]")):
            load_config(
                _write(tmp_path, raw),
                [override, "eval.sliding_window_stride=1"] if "window" in override else [override],
            )
    with pytest.raises(ConfigError, match=r"--set data.train\[5\]"):
        apply_overrides(raw, ["data.train[5].batch_size=3"])


def test_overrides_parse_json_values_and_defaults_fill_in(tmp_path):
    cfg = load_config(TINY, ["optim.lr=0.5", "data.train[0].batch_size=3", "name=x y", "eval.best_metric=null"])
    assert cfg.optim.lr == 0.5 and cfg.data.train[0].batch_size == 3 and cfg.name == "x y"
    assert cfg.eval.best_metric == "val/val_loss" and cfg.eval.best_mode == "min"  # the original's monitor
    assert cfg.raw["optim"]["lr"] == 0.5  # what config.json gets


def test_launcher_variables():
    torchrun = read_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (torchrun.rank, torchrun.local_rank, torchrun.world_size, torchrun.master_addr, torchrun.master_port) == (
        3,
        1,
        8,
        "n1",
        1234,
    )
    slurm = read_env(
        {
            "SLURM_PROCID": "5",
            "SLURM_LOCALID": "1",
            "SLURM_NTASKS": "8",
            "SLURM_JOB_NODELIST": "gpu[007-009,12],cpu1",
            "SLURM_JOB_ID": "123456",
        }
    )
    assert (slurm.rank, slurm.local_rank, slurm.world_size, slurm.master_addr, slurm.launcher) == (
        5,
        1,
        8,
        "gpu007",
        "slurm",
    )
    assert slurm.master_port == slurm_master_port("123456") == 20000 + 123456 % 20000
    assert first_slurm_host("node1,node2") == "node1" and first_slurm_host("a-b[1-2]") == "a-b1"
    assert read_env({}).world_size == 1
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        read_env({"RANK": "0", "WORLD_SIZE": "2"})
    assert EXIT_PREEMPTED == 75


def test_lr_schedules():
    cos = LRSchedule("cosine", total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    assert [cos(s) for s in (0, 1)] == [0.5, 1.0]
    assert cos(2) == pytest.approx(1.0) and cos(6) == pytest.approx(0.55) and cos(10) == pytest.approx(0.1)
    const = LRSchedule("constant", total_steps=10, warmup_steps=4)
    assert [const(s) for s in (0, 3, 4, 9)] == [0.25, 1.0, 1.0, 1.0]


def test_no_weight_decay_on_norms_biases_embeddings():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = torch.nn.Parameter(torch.zeros(1, 4, 8))
            self.word_embeddings = torch.nn.Embedding(10, 8)
            self.norm = torch.nn.LayerNorm(8)
            self.fc = torch.nn.Linear(8, 8)

    model = M()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and [id(p) for p in decay["params"]] == [id(model.fc.weight)]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 5


def test_checkpoint_folders_complete_latest_and_pruning(tmp_path):
    for step in (2, 4, 6, 8):
        (tmp_path / tag_for_step(step)).mkdir()
        if step != 8:  # step 8 died while saving
            mark_complete(tmp_path / tag_for_step(step), step)
    assert latest_complete(tmp_path).name == "step_00000006"
    assert resolve_resume("auto", tmp_path).name == "step_00000006"
    with pytest.raises(FileNotFoundError, match="COMPLETE"):
        resolve_resume(str(tmp_path / "step_00000008"), tmp_path)
    prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004", "step_00000006", "step_00000008"]
    assert resolve_resume("auto", tmp_path / "nothing") is None


def test_resume_candidates_are_a_list_for_every_kind_of_resume(tmp_path):
    """auto: every complete checkpoint, newest first (the order --resume auto falls back in); a finished folder
    or a ds_to_universal folder (zero/, no COMPLETE): a list of that one; no --resume: none."""
    for step in (2, 4, 6):
        mark_complete(tmp_path / tag_for_step(step), step)
    universal = tmp_path / "step_00000006_universal"
    (universal / "zero").mkdir(parents=True)
    assert [p.name for p in resume_candidates("auto", tmp_path)] == ["step_00000006", "step_00000004", "step_00000002"]
    assert resume_candidates(str(tmp_path / "step_00000004"), tmp_path) == [tmp_path / "step_00000004"]
    assert resume_candidates(str(universal), tmp_path) == [universal]
    assert resume_candidates(None, tmp_path) == [] and resume_candidates("auto", tmp_path / "no") == []


def test_sliding_windows_take_every_offset_of_each_segment():
    video = torch.arange(8).view(1, 8, 1, 1, 1).expand(2, 8, 3, 2, 2)
    windows = sliding_windows(video, window_frames=4, stride=1)
    assert [w[0, :, 0, 0, 0].tolist() for w in windows] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert len(sliding_windows(video, 2, 2)) == 2 and len(sliding_windows(video, 2, 3)) == 2
    with pytest.raises(ValueError, match="multiple"):
        sliding_windows(video, 3, 1)


def test_deepspeed_config_is_explicit(tmp_path):
    cfg = load_config(TINY, ["optim.grad_accum_steps=2", "optim.grad_clip=0", "deepspeed.zero_stage=3"])
    ds = deepspeed_config(cfg, world_size=4, dtype_name="fp32")
    assert ds["gradient_clipping"] == 0.0 and ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["train_batch_size"] == 8 * 2 * 4 and ds["zero_optimization"]["stage"] == 3
    assert RunPaths("o").eval_metrics(12).name == "eval_step_00000012.json"
