"""The models' benchmark scripts run end to end on tiny settings (the GPU check in its --dry-run form)."""

import importlib.util
import json
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_run(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    threads = torch.get_num_threads()
    try:
        assert _load("gpu_check").main(["--dry-run", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)  # the script pins one thread; leave the session as it was
    report = json.loads(out.read_text())
    a = report["agreement"]
    assert report["agreement_ok"] and report["config"] == "tiny"
    assert 0.99 <= a["bf16_min_cosine"] <= 1.0 and a["bf16_max_rel_error"] > 0  # bf16 really ran
    assert a["sdpa_vs_explicit_max_rel_error"] < 1e-5
    assert [(r["T"], r["attn_impl"]) for r in report["speed"]] == [
        (1, "sdpa"),
        (1, "explicit"),
        (4, "sdpa"),
        (4, "explicit"),
    ]
    t1, t4 = report["speed"][0], report["speed"][2]
    # counted FLOPs grow with the tokens: 1 + 4*16 vs 1 + 16 for the tiny config
    assert 3.5 * t1["gflops_per_sample"] < t4["gflops_per_sample"] < 4.5 * t1["gflops_per_sample"]
    assert t1["samples_per_s"] > 0 and t1["mfu"] is None
    assert "agreement: OK" in capsys.readouterr().out


def test_bench_models_tiny(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        _load("bench_models").main(
            [
                "--configs",
                "tiny",
                "--frames",
                "2",
                "--reps",
                "1",
                "--warmup",
                "0",
                "--threads",
                "1",
                "--no-attention",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    (result,) = json.loads(out.read_text())
    assert result["config"] == "tiny" and result["T"] == 2
    assert result["explicit"]["cpu_ms"] > 0 and result["sdpa"]["cpu_ms"] > 0
    assert "| tiny | 2 | 16 |" in capsys.readouterr().out
