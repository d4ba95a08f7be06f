"""What changes the demo's bits (docs/DEMO.md, "Reproducibility"): renders and short stage-1 runs, compared.

    python3 bench/demo_repro.py render --out DIR                 # render the demo data twice, compare every member
    python3 bench/demo_repro.py train --out DIR --steps 30       # stage-1 runs of the demo under other settings

`render` makes DIR/r1 and DIR/r2 from the same seed (small sizes) and compares the shards member by member.
`train` renders (or reuses) DIR/data, then runs the demo's stage 1 (configs/demo_1f.json, 2 ranks, the demo's
child environment) `--steps` steps: a baseline, a repeat, and one run per variant that changes the caller's
thread count or the CPU kernels torch and MKL use; it prints how many of the weight tensors differ from the
baseline. Equal bits for the repeat, different ones for every variant, is what the docs report.
"""

import argparse
import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMALL = {"train_clips": 240, "images": 200}
VARIANTS = {
    "repeat": {},
    "caller OMP_NUM_THREADS=2 (before the pin)": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
    "torch AVX2 kernels (ATEN_CPU_CAPABILITY=avx2)": {"ATEN_CPU_CAPABILITY": "avx2"},
    "MKL AVX2 path (MKL_CBWR=AVX2)": {"MKL_CBWR": "AVX2"},
}


def shard_members(folder: Path) -> dict:
    members = {}
    for shard in sorted(folder.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            members[str(shard.relative_to(folder))] = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    return members


def render(out: Path, seed: int) -> None:
    from pipeline.demo.render import DemoSpec, generate

    runs = [
        shard_members(generate(out / name, DemoSpec(seed=seed, **SMALL), progress=False)["train"].parent)
        for name in ("r1", "r2")
    ]
    first, second = runs
    assert first.keys() == second.keys(), "the two renders wrote different shards"
    total = order = differ = 0
    kinds = {}
    for shard, members in first.items():
        other = second[shard]
        if [n for n, _ in members] != [n for n, _ in other]:
            order += 1
            continue
        for (name, data), (_, data2) in zip(members, other):
            total += 1
            if data != data2:
                differ += 1
                kinds[name.rsplit(".", 1)[-1]] = kinds.get(name.rsplit(".", 1)[-1], 0) + 1
    print(
        f"{len(first)} shards, {total} members: {order} shards in another order, {differ} members differ "
        f"(by kind: {kinds or 'none'})"
    )


def train(out: Path, seed: int, steps: int) -> None:
    import torch
    from safetensors.torch import load_file

    from models.tiny import write_tiny_text_model
    from pipeline.demo.render import DemoSpec, generate
    from pipeline.demo.run import DemoOptions, child_env, common_overrides, train_command

    opts = DemoOptions(checkout=REPO, out=out, seed=seed)
    folders = generate(out / "data", DemoSpec(seed=seed, **SMALL), progress=False)
    text_model = write_tiny_text_model(out / "text_model", seed=seed, **opts.text_model)
    sets = common_overrides(out, folders, text_model, seed) + [f"optim.total_steps={steps}", "log.every_steps=10"]

    def run(name: str, extra: dict) -> dict:
        run_dir = out / "runs" / name.split(" ")[0].replace("=", "_")
        cmd = train_command(REPO / "configs" / "demo_1f.json", sets + [f"output_dir={run_dir}"], 2)
        with open(out / f"{run_dir.name}.log", "wb") as sink:
            subprocess.run(cmd, cwd=REPO, env={**child_env(os.environ), **extra}, stdout=sink, stderr=sink, check=True)
        return load_file(run_dir / "weights" / "final" / "weights.safetensors")

    base = run("baseline", {})
    for name, extra in VARIANTS.items():
        other = run(name, extra)
        differ = [k for k in base if not torch.equal(base[k], other[k])]
        biggest = max(((base[k].double() - other[k].double()).abs().max().item() for k in differ), default=0.0)
        print(f"{name}: {len(differ)} of {len(base)} tensors differ after {steps} steps (max |diff| {biggest:.2g})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["render", "train"])
    parser.add_argument("--out", required=True, type=Path, help="an empty or new folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if args.what == "render":
        render(args.out.resolve(), args.seed)
    else:
        train(args.out.resolve(), args.seed, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
