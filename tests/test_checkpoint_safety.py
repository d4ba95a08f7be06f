"""Loading checkpoints: no file a user can point a command at runs code, and a damaged file is named.

Over real tiny runs at ZeRO 0, 2 and 3 (launch/train.py, one rank, a checkpoint at steps 1 and 2):
- a crafted pickle (its __reduce__ would create a marker file) put in place of any file of any entry point
  is refused naming the global it asks for, and the marker never appears;
- every file of a checkpoint folder x every kind of damage: evaluate and search extract exit 2 with a message
  naming the file (never a traceback), an explicit resume raises naming it, and --resume auto falls back to
  the previous checkpoint, saying so in the log.
"""

import json
import logging
import os
import random
import re
import shutil

import numpy as np
import pytest
import torch

from foundation.safeload import DamagedFileError, RefusedGlobalError
from pipeline.train.checkpoint_format import (
    MARKER,
    RANK_STATE_KEYS,
    consolidated_state_dict,
    deepspeed_loads_restricted,
    load_rank_state,
    mark_complete,
    read_run_info,
    save_rank_state,
    tag_for_step,
    verify_checkpoint,
    write_run_info,
)
from pipeline.train.checkpoints import (
    first_sound_checkpoint,
    latest_complete,
    list_checkpoints,
    load_model,
    resume_candidates,
)
from test_train_fixtures import REPO, launch_ranks, make_tiny_assets, read_log, read_weights, wait_all

CONFIG = str(REPO / "configs" / "tiny_1f.json")
STAGES = (0, 2, 3)
SYSTEM = f"{os.system.__module__}.system"  # how a pickle names os.system (posix.system on Linux)


class Payload:
    """Unpickling this runs `touch marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def craft(path, marker, **extra):
    """A torch zip file holding a tensor and the payload: what a hostile checkpoint file looks like."""
    torch.save({"module": {"w": torch.zeros(2)}, "payload": Payload(marker), **extra}, path)


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """zero{0,2,3}/: 2 steps of the tiny config on one rank, a checkpoint after each step, weights/final."""
    root = tmp_path_factory.mktemp("ckpt_safety")
    assets = make_tiny_assets(root / "assets")
    common = assets + [
        "data.eval=[]",
        "eval.best_metric=null",
        "optim.total_steps=2",
        "checkpoint.every_steps=1",
        "checkpoint.keep_last=2",
        "model.learnable_temperature=false",
        "log.every_steps=1",
    ]
    procs = {
        z: launch_ranks(
            ["--config", CONFIG, *_sets(common + [f"deepspeed.zero_stage={z}", f"output_dir={root / f'zero{z}'}"])],
            1,
            root / f"zero{z}" / "logs",
        )
        for z in STAGES
    }
    for z, p in procs.items():
        assert wait_all(p, 400) == [0], read_log(root / f"zero{z}" / "logs")[-3000:]
    return {"root": root, "assets": assets, "common": common}


def _copy_run(runs, zero_stage, dst):
    shutil.copytree(runs["root"] / f"zero{zero_stage}", dst, ignore=shutil.ignore_patterns("*.py", "logs", "tb"))
    return dst


def _evaluate(path, runs, capsys):
    """launch/evaluate.py in this process: (exit code, stderr)."""
    from launch import evaluate

    capsys.readouterr()
    code = evaluate.main(
        [
            "--checkpoint",
            str(path),
            "--config",
            CONFIG,
            *_sets(runs["assets"]),
            "--out",
            str(runs["root"] / "unexpected_metrics.json"),
        ]
    )  # only if loading wrongly works
    return code, capsys.readouterr().err


def _extract(path, tmp_path, capsys):
    """launch/search.py extract in this process: (exit code, stderr)."""
    from launch import search

    capsys.readouterr()
    code = search.main(
        [
            "extract",
            "--model",
            str(path),
            "--shards",
            str(tmp_path / "shards"),
            "--out",
            str(tmp_path / "collection"),
            "--device",
            "cpu",
        ]
    )
    return code, capsys.readouterr().err


class Messages(logging.Handler):
    """Records of one logger (caplog's handler does not survive the entry points' setup_logging)."""

    def __init__(self, name):
        super().__init__()
        self.lines, self.logger = [], logging.getLogger(name)

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


def damages(file, data):
    """{kind: bytes} for one file: the byte-level kinds for every file, wrong JSON types for JSON files."""
    rng = random.Random(file.name)
    kinds = {
        "empty": b"",
        "truncated at half": data[: len(data) // 2],
        "random bytes": bytes(rng.getrandbits(8) for _ in range(max(64, min(len(data), 4096)))),
    }
    if file.suffix == ".json" or file.name == MARKER:
        kinds["a JSON list"] = b"[1, 2]\n"
        kinds["step as a string"] = json.dumps({**json.loads(data), "step": "2"}).encode()
    return kinds


# ---------------------------------------------------------------------------------------------- sound files


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", STAGES)
def test_sound_checkpoints_load_as_the_exported_weights(runs, zero_stage):
    """The restricted loading changes nothing for real files: step 2's checkpoint is the final weights."""
    run = runs["root"] / f"zero{zero_stage}"
    newest = latest_complete(run / "checkpoints")
    assert newest.name == "step_00000002" and verify_checkpoint(newest)["zero_stage"] == zero_stage
    loaded, exported = load_model(newest).state_dict(), read_weights(run / "weights" / "final")
    for key, value in exported.items():
        assert torch.equal(loaded[key], value), key
    assert torch.load is torch.serialization.load


def test_the_payload_runs_when_loaded_without_restriction(tmp_path):
    """The crafted files below would run code: checked once, so their refusals are meaningful."""
    marker = tmp_path / "ran"
    craft(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


# ---------------------------------------------------------------------------------------------- crafted files


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", STAGES)
def test_crafted_pickles_in_a_checkpoint_folder_are_refused_everywhere(runs, zero_stage, tmp_path, capsys):
    root = _copy_run(runs, zero_stage, tmp_path / "run") / "checkpoints"
    previous, newest = list_checkpoints(root)
    marker = tmp_path / "ran"
    files = sorted(newest.glob("*.pt"))
    assert len(files) == (2 if zero_stage == 0 else 3)
    for file in files:
        data = file.read_bytes()
        craft(file, marker)
        try:
            for code, err in (_evaluate(newest, runs, capsys), _extract(newest, tmp_path, capsys)):
                assert code == 2 and str(file) in err and SYSTEM in err and "Traceback" not in err, err
            with pytest.raises(RefusedGlobalError, match=re.escape(str(file))) as refused:
                first_sound_checkpoint(str(newest), resume_candidates(str(newest), root))
            assert refused.value.global_name == SYSTEM
            with Messages("pipeline.train.checkpoints") as log:
                assert first_sound_checkpoint("auto", resume_candidates("auto", root)) == previous
            assert any(str(file) in line and "falling back" in line for line in log.lines), log.lines
            # past the folder check too: DeepSpeed's own loading (zero_to_fp32 at ZeRO 2/3) and the trainer's
            info = read_run_info(newest)
            with pytest.raises(RefusedGlobalError, match=re.escape(SYSTEM)):
                if file.name.startswith("trainer_rank_"):
                    load_rank_state(newest, 0)
                else:
                    consolidated_state_dict(newest, info)
        finally:
            file.write_bytes(data)
        assert not marker.exists(), file
    assert torch.load is torch.serialization.load


def test_deepspeeds_own_loaders_are_restricted(tmp_path):
    """engine.load_checkpoint reads through TorchCheckpointEngine / SDLoaderFactory; under the guard they refuse
    the payload, also one hidden inside an allowed DeepSpeed class, and torch.load is torch's again after."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.state_dict_factory import SDLoaderFactory

    marker = tmp_path / "ran"
    plain, nested = tmp_path / "plain.pt", tmp_path / "nested.pt"
    craft(plain, marker)
    scaler = LossScaler(1.0)
    scaler.hidden = Payload(marker)
    torch.save({"optimizer_state_dict": {"loss_scaler": scaler}}, nested)
    with deepspeed_loads_restricted(tmp_path):
        for file in (plain, nested):
            with pytest.raises(RefusedGlobalError, match=re.escape(SYSTEM)):
                TorchCheckpointEngine().load(str(file), map_location="cpu")
        with pytest.raises(RefusedGlobalError, match=re.escape(str(plain))):
            SDLoaderFactory.get_sd_loader([str(plain)], checkpoint_engine=TorchCheckpointEngine()).load(1, 0)
        good = tmp_path / "good.pt"
        torch.save({"optimizer_state_dict": {"loss_scaler": LossScaler(2.0)}}, good)
        assert TorchCheckpointEngine().load(str(good))["optimizer_state_dict"]["loss_scaler"].cur_scale == 2.0
    assert torch.load is torch.serialization.load and not marker.exists()


def test_features_and_parts_never_unpickle(tmp_path):
    """Search's own files are numpy arrays read with allow_pickle=False: an object array is refused by name."""
    from pipeline.search import collection
    from pipeline.search import features as feats

    marker = tmp_path / "ran"
    evil = np.array([Payload(marker)], dtype=object)
    folder = tmp_path / "collection"
    folder.mkdir()
    (folder / collection.INFO_FILE).write_text(json.dumps({"shards_dir": str(tmp_path)}))
    (folder / collection.ITEMS_FILE).write_text("")
    np.save(folder / collection.FEATURES_FILE, evil, allow_pickle=True)
    with pytest.raises(DamagedFileError, match=re.escape(str(folder / collection.FEATURES_FILE))):
        collection.Collection(folder).vectors()
    part = tmp_path / "part.npz"
    np.savez(part, embeddings=evil, rows=np.array("[]"), skipped=np.array("[]"))
    with pytest.raises(DamagedFileError, match=re.escape(str(part))):
        feats._read_part(part)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- damaged files


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", STAGES)
def test_every_damaged_checkpoint_file_is_named_by_every_entry_point(runs, zero_stage, tmp_path, capsys):
    root = _copy_run(runs, zero_stage, tmp_path / "run") / "checkpoints"
    previous, newest = list_checkpoints(root)
    files = sorted(p for p in newest.iterdir() if p.is_file())
    assert {"COMPLETE", "trainer.json", "trainer_rank_00000.pt"} < {f.name for f in files} and len(files) >= 4
    cases = 0
    for file in files:
        data = file.read_bytes()
        for kind, bad in damages(file, data).items():
            file.write_bytes(bad)
            where = f"{file.name}, {kind}"
            try:
                for code, err in (_evaluate(newest, runs, capsys), _extract(newest, tmp_path, capsys)):
                    assert code == 2 and str(file) in err and "Traceback" not in err, (where, err)
                    assert kind != "empty" or "empty (0 bytes)" in err, (where, err)
                with pytest.raises((DamagedFileError, FileNotFoundError), match=re.escape(str(file))):
                    first_sound_checkpoint(str(newest), resume_candidates(str(newest), root))
                with Messages("pipeline.train.checkpoints") as log:
                    assert first_sound_checkpoint("auto", resume_candidates("auto", root)) == previous, where
                assert any(str(file) in line and "falling back" in line for line in log.lines), (where, log.lines)
            finally:
                file.write_bytes(data)
            cases += 1
    assert cases >= 3 * len(files) + 4
    assert first_sound_checkpoint("auto", resume_candidates("auto", root)) == newest  # restored


@pytest.mark.slow
def test_damaged_weights_folder_and_weights_file_are_named(runs, tmp_path, capsys):
    """evaluate and search extract on a weights folder with any file damaged, and on a damaged or crafted
    .pth.tar (zip and legacy torch formats): exit 2 naming the file; a crafted one names the global."""
    folder, marker = tmp_path / "final", tmp_path / "ran"
    shutil.copytree(runs["root"] / "zero0" / "weights" / "final", folder)
    craft(tmp_path / "crafted", marker)
    for name in ("weights.safetensors", "model_config.json", "text_config.json"):
        file = folder / name
        data = file.read_bytes()
        kinds = {k: v for k, v in damages(file, data).items() if k != "step as a string"}
        kinds["a crafted pickle"] = (tmp_path / "crafted").read_bytes()
        for kind, bad in kinds.items():
            file.write_bytes(bad)
            try:
                for code, err in (_evaluate(folder, runs, capsys), _extract(folder, tmp_path, capsys)):
                    assert code == 2 and str(file) in err and "Traceback" not in err, (name, kind, err)
            finally:
                file.write_bytes(data)

    state = {"state_dict": read_weights(folder)}
    whole, legacy = tmp_path / "whole.pth.tar", tmp_path / "legacy.pth.tar"
    torch.save(state, whole)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    files = {
        "empty": b"",
        "zip, truncated at half": whole.read_bytes()[: whole.stat().st_size // 2],
        "legacy, truncated at half": legacy.read_bytes()[: legacy.stat().st_size // 2],
        "random bytes": bytes(random.Random(0).getrandbits(8) for _ in range(4096)),
    }
    files["crafted"] = (tmp_path / "crafted").read_bytes()
    for kind, data in files.items():
        file = tmp_path / f"model_best_{kind.replace(' ', '_').replace(',', '')}.pth.tar"
        file.write_bytes(data)
        for code, err in (_evaluate(file, runs, capsys), _extract(file, tmp_path, capsys)):
            assert code == 2 and str(file) in err and "Traceback" not in err, (kind, err)
            assert ("refused to unpickle" in err and SYSTEM in err) == (kind == "crafted"), (kind, err)
    assert not marker.exists()


def _stage0_checkpoint(folder, step):
    """The files of a finished one-rank ZeRO-0 checkpoint, as the trainer and DeepSpeed lay them out."""
    folder.mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(2)}}, folder / "mp_rank_00_model_states.pt")
    save_rank_state(folder, 0, {k: None for k in RANK_STATE_KEYS})
    write_run_info(folder, {"step": step, "world_size": 1, "zero_stage": 0, "config": {"model": {}}})
    mark_complete(folder, step)
    return folder


def test_ranks_agree_before_resume_falls_back(tmp_path):
    """A checkpoint another rank found damaged is skipped by every rank (auto), or stops an explicit resume;
    with none left auto stops listing each problem and sets nothing aside; a marker copied from another step
    is damage too."""
    older, newer = (_stage0_checkpoint(tmp_path / tag_for_step(s), s) for s in (1, 2))
    candidates = resume_candidates("auto", tmp_path)
    assert candidates == [newer, older] and first_sound_checkpoint("auto", candidates) == newer
    votes = []

    def another_rank_fails_the_newest(local_failure):
        votes.append(local_failure)
        return local_failure or len(votes) == 1

    with Messages("pipeline.train.checkpoints") as log:
        assert first_sound_checkpoint("auto", candidates, another_rank_fails_the_newest) == older
    assert votes == [False, False] and any("another rank found" in line for line in log.lines)
    with pytest.raises(DamagedFileError, match="another rank found"):
        first_sound_checkpoint(str(newer), [newer], lambda local_failure: True)
    with pytest.raises(DamagedFileError, match=r"none of the 2 finished checkpoints"):
        first_sound_checkpoint("auto", candidates, lambda local_failure: True, set_aside=True)
    assert list_checkpoints(tmp_path) == [older, newer]  # nothing was moved
    mark_complete(newer, 1)
    with pytest.raises(DamagedFileError, match=re.escape(f"{newer / MARKER}: says step 1")):
        verify_checkpoint(newer)
    assert first_sound_checkpoint("auto", candidates, set_aside=True) == older
    assert sorted(p.name for p in tmp_path.iterdir()) == [older.name, f"{newer.name}.damaged"]  # set aside


# ---------------------------------------------------------------------------------------------- resume, end to end


@pytest.mark.slow
def test_resume_falls_back_or_refuses_naming_the_file(runs, tmp_path):
    """launch/train.py: --resume auto past a half-written trainer state trains on from the previous checkpoint
    (and sets the damaged one aside); --resume of a folder with a crafted trainer state exits 2 naming it."""
    auto = _copy_run(runs, 2, tmp_path / "auto")
    damaged = auto / "checkpoints" / "step_00000002" / "trainer_rank_00000.pt"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    explicit = _copy_run(runs, 0, tmp_path / "explicit")
    crafted, marker = explicit / "checkpoints" / "step_00000002" / "trainer_rank_00000.pt", tmp_path / "ran"
    craft(crafted, marker)
    common = runs["common"] + ["optim.total_steps=3"]
    procs = launch_ranks(
        ["--config", CONFIG, *_sets(common + ["deepspeed.zero_stage=2", f"output_dir={auto}"]), "--resume", "auto"],
        1,
        auto / "logs_resumed",
    )
    procs += launch_ranks(
        [
            "--config",
            CONFIG,
            *_sets(common + ["deepspeed.zero_stage=0", f"output_dir={explicit}"]),
            "--resume",
            str(crafted.parent),
        ],
        1,
        explicit / "logs_resumed",
    )
    codes = wait_all(procs, 400)
    log_auto, log_explicit = read_log(auto / "logs_resumed"), read_log(explicit / "logs_resumed")
    assert codes[0] == 0, log_auto[-3000:]
    assert str(damaged) in log_auto and "falling back to the previous complete checkpoint" in log_auto
    assert f"resumed from {auto / 'checkpoints' / 'step_00000001'} at step 1" in log_auto
    assert (auto / "checkpoints" / "step_00000002.damaged" / damaged.name).is_file()
    assert [p.name for p in list_checkpoints(auto / "checkpoints")] == ["step_00000002", "step_00000003"]
    assert codes[1] == 2, log_explicit[-3000:]
    assert str(crafted) in log_explicit and SYSTEM in log_explicit and "Traceback" not in log_explicit
    assert not marker.exists()
