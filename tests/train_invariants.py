"""One rank of the training-invariant checks (tests/test_train_invariants.py starts 1 or 2 of these).

    python tests/train_invariants.py --out DIR --steps N --eval-every K --resume-at 1,3 --preempt-at 3 \
        [--set key=value ...]

Every rank runs the same sequence of tiny runs in this one process (start-up costs are paid once), with the
real shard loader:
- `full`: evaluation every K steps and a checkpoint after every step (all kept);
- `noeval`: no evaluation and no checkpoints: evaluating or saving must not change what is trained;
- `resume_S`: from `full`'s checkpoint at step S to the end: a resume at any step continues exactly;
- `preempt_S`: the preemption flag is raised after step S (exit 75, checkpoint saved before any evaluation
  due at S), then `--resume auto` in the same folder runs that evaluation and continues.
Each run's final weights land in DIR/<run>/weights/final. Every forward pass of every module records whether the
module was in train mode; what disagreed with the phase (training step or evaluation) goes to
DIR/<run>/modes_rank<R>.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundation.logs import setup_logging  # noqa: E402
from foundation.preemption import EXIT_PREEMPTED  # noqa: E402
from pipeline.train.config import load_config  # noqa: E402
from pipeline.train.distributed import init_distributed, read_env, shutdown  # noqa: E402
from pipeline.train.trainer import Trainer  # noqa: E402


class ModeRecorder:
    """Forward pre-hooks on every module: counts forwards per phase and lists modules in the wrong mode."""

    def __init__(self, model, frozen_prefixes: tuple[str, ...] = ()):
        self.phase = "train"
        self.forwards = {"train": 0, "eval": 0}
        self.wrong: dict[str, list[str]] = {"train": [], "eval": []}
        for name, module in model.named_modules():
            frozen = any(name.startswith(p) for p in frozen_prefixes)
            module.register_forward_pre_hook(lambda m, _args, name=name, frozen=frozen: self._see(name, m, frozen))

    def _see(self, name: str, module, frozen: bool) -> None:
        self.forwards[self.phase] += 1
        expected = self.phase == "train" and not frozen
        if module.training != expected and name not in self.wrong[self.phase]:
            self.wrong[self.phase].append(name or "<root>")

    def watch(self, trainer: Trainer) -> None:
        evaluate = trainer.evaluate

        def evaluate_in_phase():
            self.phase = "eval"
            try:
                return evaluate()
            finally:
                self.phase = "train"

        trainer.evaluate = evaluate_in_phase


class StopAfter:
    """A preemption flag that is raised once the trainer has finished step `step` (as SIGUSR1 would be)."""

    def __init__(self, trainer: Trainer, step: int):
        self.trainer, self.step = trainer, step

    @property
    def signum(self):
        return signal.SIGUSR1 if self.trainer.step >= self.step else None

    def uninstall(self) -> None:
        pass


def run(
    config: str, overrides: list[str], env, out: Path, resume: str | None = None, stop_after: int | None = None
) -> int:
    cfg = load_config(config, overrides + [f"output_dir={out}"])
    trainer = Trainer(cfg, env)
    recorder = ModeRecorder(trainer.model, ("text_model",) if cfg.model.text.freeze else ())
    recorder.watch(trainer)
    preempt = StopAfter(trainer, stop_after) if stop_after is not None else None
    code = trainer.fit(resume, preempt)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"modes_rank{env.rank}.json").write_text(
        json.dumps({"forwards": recorder.forwards, "wrong": recorder.wrong})
    )
    return code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--eval-every", type=int, required=True)
    parser.add_argument("--resume-at", default="")
    parser.add_argument("--preempt-at", default="")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    env = read_env()
    setup_logging(rank=env.rank)
    init_distributed(env, timeout_s=120)
    steps = [f"optim.total_steps={args.steps}", "log.every_steps=1", "checkpoint.keep_last=1000"]
    with_eval = args.overrides + steps + [f"eval.every_steps={args.eval_every}", "checkpoint.every_steps=1"]
    try:
        assert run(args.config, with_eval, env, args.out / "full") == 0
        assert (
            run(
                args.config,
                args.overrides + steps + ["eval.every_steps=0", "checkpoint.every_steps=0"],
                env,
                args.out / "noeval",
            )
            == 0
        )
        for step in [int(s) for s in args.resume_at.split(",") if s]:
            checkpoint = args.out / "full" / "checkpoints" / f"step_{step:08d}"
            assert run(args.config, with_eval, env, args.out / f"resume_{step}", resume=str(checkpoint)) == 0
        for step in [int(s) for s in args.preempt_at.split(",") if s]:
            out = args.out / f"preempt_{step}"
            assert run(args.config, with_eval, env, out, stop_after=step) == EXIT_PREEMPTED
            (out / f"modes_rank{env.rank}.json").rename(out / f"modes_before_preemption_rank{env.rank}.json")
            assert run(args.config, with_eval, env, out, resume="auto") == 0
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
