"""The DeepSpeed ZeRO training loop: steps, logging, evaluation, checkpoints, preemption (docs/TRAINING.md).

One training step takes one loader step `{dataset: batch}` per gradient-accumulation micro step. Each
dataset's batch gets its own forward pass and its own NormSoftmax loss over negatives gathered from all
ranks (negatives never cross datasets, as the original); the per-dataset losses are summed (optionally
weighted, `loss.weights`) into one backward pass, and the optimizer steps once per step. The original instead
stepped the optimizer once per dataset in turn; summing keeps one optimizer step per loader step (so the step
count, LR schedule, gradient accumulation and checkpoints all count the same thing), halves the optimizer and
gradient-communication cost, and still gives each dataset's gradient the same weight.
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from foundation.fsutil import atomic_write_json
from foundation.preemption import EXIT_PREEMPTED, PreemptionFlag
from models.checkpoint import load_weights_into
from models.frozen import FrozenInTime
from models.loss import distributed_norm_softmax_terms
from pipeline.data.loader import build_train_loader
from pipeline.data.transforms import normalize_video
from pipeline.train.checkpoints import CheckpointManager
from pipeline.train.config import RunConfig
from pipeline.train.distributed import DistEnv, device_for
from pipeline.train.evaluation import evaluate_run, flatten
from pipeline.train.optim import LRSchedule, adamw, lambda_lr, param_groups
from pipeline.train.tb import ScalarWriter

log = logging.getLogger(__name__)


class RunPaths:
    """The output layout other tools rely on (docs/TRAINING.md)."""

    def __init__(self, output_dir: str | Path):
        self.root = Path(output_dir)
        self.config = self.root / "config.json"
        self.checkpoints = self.root / "checkpoints"
        self.tb = self.root / "tb"
        self.final_weights = self.root / "weights" / "final"
        self.best_weights = self.root / "weights" / "best"
        self.metrics = self.root / "metrics"

    def eval_metrics(self, step: int) -> Path:
        return self.metrics / f"eval_step_{step:08d}.json"


def precision(cfg: RunConfig, device: torch.device) -> str:
    if cfg.deepspeed.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.deepspeed.precision


def deepspeed_config(cfg: RunConfig, world_size: int, dtype_name: str) -> dict:
    micro = sum(spec.batch_size for spec in cfg.data.train)  # samples per rank per micro step
    accum = cfg.optim.grad_accum_steps
    ds = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "gradient_clipping": float(cfg.optim.grad_clip),  # explicit: DeepSpeed 0.19 defaults to 1.0
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "bf16": {"enabled": dtype_name == "bf16"},
        "zero_allow_untested_optimizer": True,  # torch AdamW (no JIT-built fused kernels)
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**12,  # our own progress line instead
    }
    ds.update(cfg.deepspeed.extra)
    return ds


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Trainer:
    def __init__(self, cfg: RunConfig, env: DistEnv, train_loader=None, eval_loaders=None):

        self.cfg, self.env = cfg, env
        self.paths = RunPaths(cfg.output_dir)
        self.device = device_for(env)
        self.dtype_name = precision(cfg, self.device)
        self.dtype = torch.bfloat16 if self.dtype_name == "bf16" else torch.float32
        if self.dtype_name == "bf16" and self.device.type == "cpu":
            log.warning("bf16 on CPU: supported but slow; fp32 is the CPU default")
        if cfg.deepspeed.zero_stage == 3 and cfg.model.learnable_temperature:
            raise ValueError(
                "model.learnable_temperature with deepspeed.zero_stage 3: the temperature parameter "
                "is partitioned outside the forward pass; use ZeRO stage 0-2 or a fixed temperature"
            )

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every run
        model = FrozenInTime(cfg.model)
        if cfg.checkpoint.load_checkpoint:
            log.info(
                "initialising from %s (temporal fix %s)",
                cfg.checkpoint.load_checkpoint,
                cfg.checkpoint.load_temporal_fix,
            )
            load_weights_into(
                model,
                cfg.checkpoint.load_checkpoint,
                cfg.checkpoint.load_temporal_fix,
                noise_std=cfg.checkpoint.load_temporal_noise_std,
            )
        schedule = LRSchedule(cfg.optim.schedule, cfg.optim.total_steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
        optimizer = adamw(param_groups(model, cfg.optim.weight_decay), cfg.optim.lr, cfg.optim.betas, cfg.optim.eps)
        self.engine, *_ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda_lr(schedule),
            config=deepspeed_config(cfg, env.world_size, self.dtype_name),
        )
        self.model = self.engine.module
        self.train_loader = train_loader if train_loader is not None else self._build_train_loader()
        self.eval_loaders = eval_loaders
        self.step = 0
        self.evaluated_step: int | None = None
        self._last_eval: dict | None = None
        self.best: dict = {"metric": cfg.eval.best_metric, "value": None, "step": None}
        self.writer = ScalarWriter(self.paths.tb if env.is_main and cfg.log.tensorboard else None)
        self.checkpoints = CheckpointManager(
            self.engine, cfg, env, self.paths.checkpoints, self.dtype_name, self._all_ranks_agree
        )

    # ------------------------------------------------------------------------------------------ data

    def _build_train_loader(self):
        return build_train_loader(self.cfg.data.train, self.cfg.data.options, self.env.rank, self.env.world_size)

    def prepare_video(self, video_uint8: torch.Tensor) -> torch.Tensor:
        return normalize_video(video_uint8, self.cfg.data.options.mean, self.cfg.data.options.std).to(self.dtype)

    # ------------------------------------------------------------------------------------------ steps

    def _micro_step(self, step_batches: dict) -> dict[str, torch.Tensor]:
        """Forward, backward and (at the accumulation boundary) the optimizer step; returns this rank's detached
        losses `{(dataset, term): value}`, term "total" (L_t2v + L_v2t), "t2v" or "v2t"."""
        total, losses = 0.0, {}
        for name, batch in step_batches.items():
            video = self.prepare_video(batch["video"].to(self.device, non_blocking=True))
            text = batch["text"]
            text_emb, video_emb = self.engine(
                video, text["input_ids"].to(self.device), text["attention_mask"].to(self.device)
            )
            t2v, v2t = distributed_norm_softmax_terms(text_emb.float(), video_emb.float(), self.model.temperature())
            loss = t2v + v2t
            losses.update({(name, "total"): loss.detach(), (name, "t2v"): t2v.detach(), (name, "v2t"): v2t.detach()})
            total = total + self.cfg.loss.weights.get(name, 1.0) * loss
        self.engine.backward(total)
        self._lr = self.engine.get_lr()[0]  # the LR this step uses (the scheduler advances in step())
        self.engine.step()
        return losses

    def _all_ranks_agree(self, local: bool) -> bool:
        if self.env.world_size == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _mean_over_ranks(self, values: dict) -> dict:
        if self.env.world_size == 1 or not values:
            return values
        names = sorted(values)
        t = torch.tensor([values[n] for n in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {n: float(v) / self.env.world_size for n, v in zip(names, t.tolist())}

    # ------------------------------------------------------------------------------------------ run

    def fit(self, resume: str | None = None, preempt: PreemptionFlag | None = None) -> int:
        """Train to optim.total_steps (or until preempted); returns the process exit code.

        `preempt` is a flag installed by the caller as early as possible, so a signal that arrives while
        the model and DeepSpeed are still being set up is honoured at the first step boundary."""
        cfg = self.cfg
        if resume:
            self._resume(resume)
        if self.env.is_main:
            cfg.save(self.paths.config)  # the config this launch uses (a resume may extend total_steps)
        preempt = preempt or PreemptionFlag().install()
        try:
            if (
                cfg.data.eval
                and self.evaluated_step != self.step
                and ((cfg.eval.at_start and self.step == 0) or self._eval_due())
            ):
                self._evaluate()  # at start, or the evaluation a preempted step had not run yet
            return self._loop(preempt)
        finally:
            preempt.uninstall()
            self.writer.close()
            if hasattr(self.train_loader, "close"):
                self.train_loader.close()  # stop the loader's worker processes

    def _loop(self, preempt: PreemptionFlag) -> int:
        cfg, env = self.cfg, self.env
        samples_per_step = sum(s.batch_size for s in cfg.data.train) * cfg.optim.grad_accum_steps * env.world_size
        batches = iter(self.train_loader)
        window = {"start": time.perf_counter(), "wait": 0.0, "steps": 0, "losses": {}}
        while self.step < cfg.optim.total_steps:
            # every step, not once: from_pretrained hands the text tower over in eval mode and an evaluation
            # leaves the model in eval mode; a step in eval mode (no dropout) would make the trained weights
            # depend on the evaluation cadence and on where a run was resumed
            self.engine.train()
            for _ in range(cfg.optim.grad_accum_steps):
                waited = time.perf_counter()
                with torch.random.fork_rng(devices=[]):  # (re)starting loader workers draws a seed: keep the
                    step_batches = next(batches)  # training RNG (dropout) independent of it for resumes
                window["wait"] += time.perf_counter() - waited
                for name, loss in self._micro_step(step_batches).items():  # tensors: no host sync per step
                    window["losses"][name] = window["losses"].get(name, 0.0) + loss
            self.step += 1
            window["steps"] += 1
            if self.step % cfg.log.every_steps == 0 or self.step == cfg.optim.total_steps:
                self._log_window(window, samples_per_step)
                window = {"start": time.perf_counter(), "wait": 0.0, "steps": 0, "losses": {}}
            if self._all_ranks_agree(preempt.signum is not None):
                self.save_checkpoint()
                log.warning("preempted at step %d: checkpoint saved, exiting with %d", self.step, EXIT_PREEMPTED)
                return EXIT_PREEMPTED
            last = self.step == cfg.optim.total_steps
            if cfg.data.eval and self._eval_due():
                self._evaluate()
            if last or (cfg.checkpoint.every_steps and self.step % cfg.checkpoint.every_steps == 0):
                self.save_checkpoint()
        self.checkpoints.export(self.paths.final_weights, self.step)
        if env.is_main:
            atomic_write_json(
                self.paths.metrics / "final.json", {"step": self.step, "best": self.best, "eval": self._last_eval}
            )
        log.info("finished %d steps; weights in %s", self.step, self.paths.final_weights)
        return 0

    def _eval_due(self) -> bool:
        every = self.cfg.eval.every_steps
        return self.step > 0 and (self.step == self.cfg.optim.total_steps or (every and self.step % every == 0))

    def _log_window(self, window: dict, samples_per_step: int) -> None:
        elapsed = time.perf_counter() - window["start"]
        steps = window["steps"]
        micro = steps * self.cfg.optim.grad_accum_steps
        losses = self._mean_over_ranks({n: float(v) / micro for n, v in window["losses"].items()})
        waits = self._mean_over_ranks({"wait": window["wait"] / max(elapsed, 1e-9)})
        lr = self._lr
        throughput = samples_per_step * steps / max(elapsed, 1e-9)
        per_dataset = {name: value for (name, term), value in losses.items() if term == "total"}
        scalars = {f"train/loss/{name}": value for name, value in per_dataset.items()}
        scalars.update(
            {f"train/loss_{term}/{name}": value for (name, term), value in losses.items() if term != "total"}
        )
        scalars.update(
            {
                "train/loss_total": sum(self.cfg.loss.weights.get(n, 1.0) * v for n, v in per_dataset.items()),
                "train/lr": lr,
                "perf/samples_per_s": throughput,
                "perf/samples_per_s_per_device": throughput / self.env.world_size,
                "perf/data_wait_fraction": waits["wait"],
                "perf/step_time_s": elapsed / steps,
                "perf/memory_gb": memory_gb(self.device),
            }
        )
        self.writer.scalars(scalars, self.step)
        if self.env.is_main:
            loss_text = " ".join(f"{n} {v:.4f}" for n, v in per_dataset.items())
            log.info(
                "step %d/%d | loss %s | lr %.3g | %.1f samples/s (%.1f/device) | data wait %.0f%% | "
                "%.3f s/step | mem %.2f GB",
                self.step,
                self.cfg.optim.total_steps,
                loss_text,
                lr,
                throughput,
                throughput / self.env.world_size,
                100 * waits["wait"],
                elapsed / steps,
                scalars["perf/memory_gb"],
            )

    # ------------------------------------------------------------------------------------------ eval

    def evaluate(self) -> dict[str, dict]:
        self.engine.eval()
        # fork_rng: evaluating (its loader's worker seeds) must not move the training RNG
        devices = [self.device.index] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                return evaluate_run(
                    self.engine,
                    self.cfg,
                    self.env,
                    self.device,
                    self.dtype,
                    float(self.model.temperature()),
                    lockstep=self.cfg.deepspeed.zero_stage == 3,
                    loaders=self.eval_loaders() if self.eval_loaders is not None else None,
                )
        finally:
            self.engine.train()  # a caller that trains next expects train mode (the loop sets it anyway)

    def _evaluate(self) -> None:
        results = self.evaluate()
        self._last_eval = results
        self.evaluated_step = self.step
        flat = flatten(results)
        self.writer.scalars({f"eval/{k}": v for k, v in flat.items()}, self.step)
        if self.env.is_main:
            atomic_write_json(self.paths.eval_metrics(self.step), {"step": self.step, "metrics": results})
        metric = self.cfg.eval.best_metric
        if metric is None or metric not in flat:
            return
        value, best = flat[metric], self.best["value"]
        better = best is None or (value > best if self.cfg.eval.best_mode == "max" else value < best)
        if better:
            self.best = {"metric": metric, "value": value, "step": self.step}
            log.info("new best %s = %.4f at step %d", metric, value, self.step)
            self.checkpoints.export(self.paths.best_weights, self.step, {"best": self.best})

    # ------------------------------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        return self.checkpoints.save(
            self.step,
            self.train_loader,
            {"best": self.best, "evaluated_step": self.evaluated_step, "last_eval": self._last_eval},
        )

    def _resume(self, resume: str) -> None:
        resumed = self.checkpoints.resume(resume, self.train_loader)
        if resumed is None:
            return
        self.step, progress = resumed
        if progress is not None:
            self.best, self.evaluated_step, self._last_eval = (
                progress["best"],
                progress["evaluated_step"],
                progress["last_eval"],
            )


def train(
    cfg: RunConfig,
    env: DistEnv,
    resume: str | None = None,
    train_loader=None,
    eval_loaders=None,
    preempt: PreemptionFlag | None = None,
) -> int:
    """Build the trainer and run it; returns the exit code (0, or EXIT_PREEMPTED)."""
    preempt = preempt or PreemptionFlag().install()  # before the (slow) set-up, not only in the loop
    return Trainer(cfg, env, train_loader=train_loader, eval_loaders=eval_loaders).fit(resume, preempt)
