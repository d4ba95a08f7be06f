"""Any exception in the data path ends every rank with a non-zero exit code within a bounded time, the error named
in the log: a corrupt shard (the loader's CorruptDataError) and an exception injected into the reader, on 1 and
2 ranks. Before, the rank printed the error and then waited forever on its DataLoader worker (workers ignore
SIGTERM so a preempted rank can save, and Python's exit joined them)."""

import shutil
import time

import pytest

from test_train_fixtures import REPO, launch_ranks, make_tiny_assets, read_log, wait_all

pytestmark = pytest.mark.slow
CONFIG = str(REPO / "configs" / "tiny_1f.json")
BOUND_S = 60  # from the error in the log to every rank gone


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_assets")
    overrides = make_tiny_assets(root / "clean")
    # the same video shards with the first one damaged: its bytes are no tar archive
    broken = {}
    for name in ("videos", "val"):
        shutil.copytree(root / "clean" / name, root / f"broken_{name}")
        first = sorted((root / f"broken_{name}").glob("*.tar"))[0]
        first.write_bytes(b"this is not a tar archive " * 400)
        broken[name] = [o.replace(str(root / "clean" / name), str(root / f"broken_{name}")) for o in overrides]
    return {"clean": overrides, "broken": broken["videos"], "broken_eval": broken["val"]}


def _logs(log_dir, world):
    return "\n".join(read_log(log_dir, rank) for rank in range(world))


def _run_until_exit(args, world, log_dir, script, error_text):
    procs = launch_ranks(args, world, log_dir, script=script)
    try:
        deadline = time.time() + 300  # start-up on a loaded 2-core machine, then the error
        while error_text not in _logs(log_dir, world) and time.time() < deadline:
            if all(p.poll() is not None for p in procs):
                break
            time.sleep(0.2)
        seen = time.time()
        assert error_text in _logs(log_dir, world), _logs(log_dir, world)[-4000:]
        codes = wait_all(procs, BOUND_S)  # kills every rank and raises TimeoutError past the bound
    finally:
        if any(p.poll() is None for p in procs):
            wait_all(procs, 1)
    return codes, time.time() - seen


@pytest.mark.parametrize(
    "world, fault",
    [
        (1, "corrupt_shard"),
        (2, "corrupt_shard"),
        (1, "injected_exception"),
        (2, "injected_exception"),
        (2, "corrupt_eval_shard"),
    ],
)
def test_a_data_path_exception_ends_every_rank_quickly(assets, tmp_path, world, fault):
    common = [
        "optim.total_steps=200",
        "eval.every_steps=0",
        "checkpoint.every_steps=0",
        "eval.at_start=false",
        f"output_dir={tmp_path / 'run'}",
        "data.options.max_corrupt_fraction=0",
        "data.options.corrupt_check_after=0",
        "deepspeed.comm_timeout_s=120",
    ]
    if fault == "corrupt_shard":
        overrides, script, error = assets["broken"] + common, "launch/train.py", "CorruptDataError"
        prefix = []
    elif fault == "corrupt_eval_shard":  # the evaluation's loader, in the evaluation at start
        overrides = assets["broken_eval"] + common + ["eval.at_start=true"]
        script, error, prefix = "launch/train.py", "CorruptDataError", []
    else:
        overrides, script, error = assets["clean"] + common, "tests/train_with_fault.py", "injected data-path fault"
        prefix = ["3"]
    args = prefix + ["--config", CONFIG] + [a for o in overrides for a in ("--set", o)]
    codes, took = _run_until_exit(args, world, tmp_path / "logs", script, error)
    assert all(code not in (0, 75) for code in codes), (codes, _logs(tmp_path / "logs", world)[-3000:])
    assert took < BOUND_S
