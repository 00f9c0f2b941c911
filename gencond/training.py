"""One trainer for every task, on accelerate.

A task hands over a :class:`TrainingJob`. Batches and the diffusion noise of step k come from a
generator seeded by (seed, k, rank), so a resumed run replays exactly the steps an uninterrupted
one would: the checkpoint holds model, optimizer, lr schedule, EMA and the step counter.
"""
from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from accelerate import Accelerator, PartialState
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig
from safetensors.torch import save_model as save_model_file
from tqdm.auto import tqdm

from .checkpoints import apply_checkpoint, latest_checkpoint, newest_readable, remove_old, save_checkpoint
from .errors import UserError
from .runs import BEST_WEIGHTS, CHECKPOINTS, LAST_WEIGHTS, METRICS, RunLock, truncate_metrics



class TrainingError(UserError):
    """Training cannot go on (e.g. the loss is not finite); the message says what to do."""


@dataclass
class TrainingJob:
    """What a task hands the trainer.

    ``batch_fn(step, generator)`` returns the batch of a step and must depend on nothing else;
    ``loss_fn(model, batch, generator)`` returns (loss, metrics); ``validate(model)`` returns
    metrics, of which ``monitor`` (lower is better) picks the best checkpoint.
    """

    model: torch.nn.Module
    batch_fn: Callable[[int, torch.Generator], Any]
    loss_fn: Callable[[torch.nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict]]
    validate: Optional[Callable[[torch.nn.Module], dict[str, float]]] = None
    monitor: str = "val_loss"


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped: str  # "max_steps" | "max_minutes" | "interrupted"
    best: Optional[float]
    elapsed_s: float


class TrainState:
    """Counters saved with every checkpoint."""

    def __init__(self):
        self.step, self.elapsed_s, self.best = 0, 0.0, None

    def state_dict(self) -> dict:
        return {"step": self.step, "elapsed_s": self.elapsed_s, "best": self.best}

    def load_state_dict(self, d: dict) -> None:
        self.step, self.elapsed_s, self.best = d["step"], d["elapsed_s"], d["best"]


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The random generator of one training step: a pure function of (seed, step, rank)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1009 + rank) % (2**62))


def save_model(model: torch.nn.Module, path: Path) -> None:
    """Weights for inference: Hugging Face format for ModelMixin models, else a safetensors file."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(path)
    else:
        path.mkdir(parents=True, exist_ok=True)
        save_model_file(model, str(path / "model.safetensors"))


@contextmanager
def ema_weights(model: torch.nn.Module, ema: Optional[EMAModel]):
    """Temporarily swap the EMA weights into ``model``."""
    if ema is None:
        yield
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield
    finally:
        ema.restore(model.parameters())


class _StopFlag:
    """First Ctrl-C (or SIGTERM) asks the loop to checkpoint and stop after the step in flight;
    a second one aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, *_):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(cfg: DictConfig, job: TrainingJob, run_dir: str | Path, progress: bool = True) -> TrainResult:
    """Train ``job`` under ``cfg.train`` into ``run_dir``, resuming from its newest readable
    checkpoint; the main process holds the run's lock meanwhile."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir) if PartialState().is_main_process else nullcontext():
        return _train(cfg, job, run_dir, progress)


def _train(cfg: DictConfig, job: TrainingJob, run_dir: Path, progress: bool) -> TrainResult:
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    acc = Accelerator(mixed_precision=tc.mixed_precision, log_with="tensorboard", project_dir=str(run_dir))
    acc.init_trackers("tensorboard")
    model = job.model
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    lr_sched = get_scheduler(tc.lr_schedule, opt, num_warmup_steps=tc.warmup_steps, num_training_steps=tc.max_steps)
    model, opt, lr_sched = acc.prepare(model, opt, lr_sched)
    ema = EMAModel(acc.unwrap_model(model).parameters(), decay=tc.ema_decay) if tc.ema_decay else None
    state = TrainState()

    def training_objects() -> dict:
        return dict(model=acc.unwrap_model(model), optimizer=opt, lr_scheduler=lr_sched, ema=ema, scaler=acc.scaler)

    loaded = newest_readable(run_dir, acc.process_index, ema is not None, say=acc.print)
    if loaded is not None:
        state.load_state_dict(apply_checkpoint(loaded, **training_objects()))
        if acc.is_main_process:
            dropped = truncate_metrics(run_dir, state.step)
            if dropped:
                acc.print(f"dropped {dropped} lines of {METRICS} logged after step {state.step} (replayed now)")
        acc.print(f"resuming {run_dir} from step {state.step}")

    def checkpoint() -> Path:
        path = run_dir / CHECKPOINTS / f"step_{state.step:08d}"
        acc.wait_for_everyone()
        if acc.is_main_process and path.exists():
            shutil.rmtree(path)
        acc.wait_for_everyone()
        save_checkpoint(path, **training_objects(), counters=state.state_dict(), rank=acc.process_index,
                        is_main=acc.is_main_process)
        acc.wait_for_everyone()
        if acc.is_main_process:
            remove_old(run_dir, tc.keep_checkpoints)
        return path

    def run_validation() -> None:
        inner = acc.unwrap_model(model)
        with ema_weights(inner, ema):
            metrics = job.validate(inner)
            value = metrics.get(job.monitor)
            if value is None:
                raise TrainingError(f"validate() returned {sorted(metrics)}, without the monitored '{job.monitor}'")
            if acc.is_main_process and (state.best is None or value < state.best):
                state.best = float(value)
                save_model(inner, run_dir / BEST_WEIGHTS)
        log({**metrics, "best_" + job.monitor: state.best})

    metrics_file = run_dir / METRICS

    def log(metrics: dict) -> None:
        acc.log(metrics, step=state.step)
        if acc.is_main_process:
            with metrics_file.open("a") as f:
                f.write(json.dumps({"step": state.step, **metrics}) + "\n")

    accum = max(1, tc.grad_accum_steps)
    stopped = "max_steps"
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    bar = tqdm(total=tc.max_steps, initial=state.step, desc=f"train {run_dir.name}", disable=not progress or not acc.is_main_process)
    model.train()
    with _StopFlag() as stop:
        while state.step < tc.max_steps:
            if tc.max_minutes is not None and state.elapsed_s >= 60 * tc.max_minutes:
                stopped = "max_minutes"
                break
            if stop.requested:
                stopped = "interrupted"
                break
            t0 = time.perf_counter()
            for micro in range(accum):
                gen = step_generator(cfg.seed, state.step * accum + micro, acc.process_index)
                batch = job.batch_fn(state.step * accum + micro, gen)
                sync = acc.no_sync(model) if micro < accum - 1 else nullcontext()
                with sync, acc.autocast():
                    loss, _ = job.loss_fn(model, batch, gen)
                if not torch.isfinite(loss):
                    last = latest_checkpoint(run_dir)
                    raise TrainingError(
                        f"loss is {loss.item()} at step {state.step}; training stopped, last good checkpoint: "
                        f"{last or 'none'}. Lower train.lr or set train.grad_clip, then rerun to resume."
                    )
                acc.backward(loss / accum)
            if tc.grad_clip:
                acc.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(acc.unwrap_model(model).parameters())
            state.step += 1
            state.elapsed_s += time.perf_counter() - t0
            window_loss += loss.item()
            window_steps += 1
            bar.update(1)
            if state.step % tc.log_every == 0 or state.step == tc.max_steps:
                now = time.perf_counter()
                rate = window_steps / max(now - window_start, 1e-9)
                avg = window_loss / window_steps
                bar.set_postfix(loss=f"{avg:.4f}", it_s=f"{rate:.1f}")
                log({"loss": avg, "lr": lr_sched.get_last_lr()[0], "steps_per_s": rate, "elapsed_s": state.elapsed_s})
                window_loss, window_steps, window_start = 0.0, 0, now
            if job.validate is not None and tc.validate_every and state.step % tc.validate_every == 0:
                t1 = time.perf_counter()
                run_validation()
                state.elapsed_s += time.perf_counter() - t1
                window_start += time.perf_counter() - t1  # keep steps/s about training steps
            if state.step % tc.checkpoint_every == 0:
                checkpoint()
    bar.close()
    checkpoint()
    if acc.is_main_process:
        with ema_weights(acc.unwrap_model(model), ema):
            save_model(acc.unwrap_model(model), run_dir / LAST_WEIGHTS)
    acc.end_training()
    if stopped == "interrupted":
        acc.print(f"interrupted at step {state.step}; checkpoint saved — run the same command again to resume")
    return TrainResult(run_dir, state.step, stopped, state.best, state.elapsed_s)
