"""One trainer for every task, on accelerate.

A task hands over a :class:`TrainingJob`. Batches and the diffusion noise of step k come from a
generator seeded by (seed, k, rank), so a resumed run replays exactly the steps an uninterrupted
one would: the checkpoint holds model, optimizer, lr schedule, EMA and the step counter.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from accelerate import Accelerator, PartialState
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig
from safetensors.torch import save_model as save_model_file
from tqdm.auto import tqdm

from .checkpoints import ExpectedShapes, apply_checkpoint, latest_checkpoint, newest_readable, remove_old, save_checkpoint
from .errors import UserError
from .pipeline import seed_mix
from .sampling import frozen
from .runs import BEST_WEIGHTS, CHECKPOINTS, LAST_WEIGHTS, METRICS, RunLock, truncate_metrics



class TrainingError(UserError):
    """Training cannot go on (e.g. the loss is not finite); the message says what to do."""


@dataclass
class TrainingJob:
    """What a task hands the trainer.

    ``batch_fn(step, generator)`` returns the batch of a micro-step and must depend on nothing else
    (with ``train.num_workers`` it runs in DataLoader worker processes); ``loss_fn(model, batch,
    generator)`` returns (loss, metrics); ``validate(model)`` returns metrics (called in eval mode),
    of which ``monitor`` (lower is better) picks the best checkpoint; ``after_step(model, step)``
    runs once per optimizer step (e.g. an EMA teacher), on the unwrapped model.
    """

    model: torch.nn.Module
    batch_fn: Callable[[int, torch.Generator], Any]
    loss_fn: Callable[[torch.nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict]]
    validate: Optional[Callable[[torch.nn.Module], dict[str, float]]] = None
    monitor: str = "val_loss"
    after_step: Optional[Callable[[torch.nn.Module, int], None]] = None


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
        from .export import machine_description

        self.step, self.elapsed_s, self.best = 0, 0.0, None
        self.machine = machine_description()  # of the latest stretch of training (for model cards)

    def state_dict(self) -> dict:
        return {"step": self.step, "elapsed_s": self.elapsed_s, "best": self.best, "machine": self.machine}

    def load_state_dict(self, d: dict) -> None:
        self.step, self.elapsed_s, self.best = d["step"], d["elapsed_s"], d["best"]


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The random generator of one training step: a pure function of (seed, step, rank)."""
    return torch.Generator().manual_seed((seed_mix(seed, step) * 1009 + rank) % (2**62))


class StepBatches(torch.utils.data.Dataset):
    """Micro-batch ``i`` of a run and the state of its generator after ``batch_fn`` drew from it,
    so that batches made in DataLoader workers are the same as batches made in the loop."""

    def __init__(self, batch_fn, seed: int, rank: int):
        self.batch_fn, self.seed, self.rank = batch_fn, seed, rank

    def __getitem__(self, i: int):
        gen = step_generator(self.seed, i, self.rank)
        return self.batch_fn(i, gen), gen.get_state()


def _as_is(item):
    return item


def micro_batches(job: TrainingJob, seed: int, rank: int, start: int, stop: int, workers: int) -> Iterator:
    """(batch, generator) for micro-steps ``start .. stop-1``, made in the loop or in worker processes."""
    batches = StepBatches(job.batch_fn, seed, rank)
    if workers <= 0:
        for i in range(start, stop):
            gen = step_generator(seed, i, rank)
            yield job.batch_fn(i, gen), gen
        return
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, stop), num_workers=workers,
                                         collate_fn=_as_is, prefetch_factor=2)
    for batch, gen_state in loader:
        gen = torch.Generator()
        gen.set_state(gen_state)
        yield batch, gen


def _load_weights_file(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"train.init_from: {folder} holds no .safetensors weights")
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(files[0])).items()}


def _fit_weights(model: torch.nn.Module, state: dict, folder: Path) -> dict:
    adapt = getattr(model, "adapt_state_dict", None)  # e.g. a model with an input added to the other run's
    if adapt is not None:
        state = adapt(state)
    own = model.state_dict()
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if wrong or missing or unexpected:
        what = (f"shapes differ for {wrong[:3]}" if wrong else f"missing {missing[:3]}" if missing
                else f"unexpected {unexpected[:3]}")
        raise UserError(f"train.init_from: the weights in {folder} do not fit this model ({what}); "
                        "init_from needs a run of the same architecture")
    return state


@dataclass
class InitWeights:
    """What ``train.init_from`` gave: the folder, the EMA weights (for the EMA's shadow when training
    goes on) and, for an export, its step and training time."""

    folder: Path
    ema_state: Optional[dict] = None
    step: int = 0
    elapsed_s: float = 0.0


def init_weights(model: torch.nn.Module, spec: str, continue_steps: bool = False) -> InitWeights:
    """Load another run's or an export's weights into ``model`` (``train.init_from=RUN_DIR[:best|last]``);
    a model with ``adapt_state_dict(state) -> state`` may first fit them to itself (e.g. zero weights for a
    new input). ``continue_steps``: an export's training weights (``raw/``) go into the model, its EMA
    weights into the EMA, and its step and training time are returned, so that training goes on."""
    from .export import RAW, is_export, read_manifest
    from .runs import weights_folder

    run, _, which = spec.partition(":")
    folder = weights_folder(Path(run), which or "last")
    if not continue_steps:
        model.load_state_dict(_fit_weights(model, _load_weights_file(folder), folder))
        return InitWeights(folder)
    if not is_export(run):
        raise UserError(f"train.init_continue: {run} is not an export; to go on training a run, resume it "
                        f"(`gencond train {run}`), or export it first with `gencond export`")
    manifest = read_manifest(run)
    ema_state = _fit_weights(model, _load_weights_file(folder), folder)
    raw = Path(run) / RAW
    model.load_state_dict(_fit_weights(model, _load_weights_file(raw), raw) if raw.is_dir() else ema_state)
    return InitWeights(folder, ema_state, int(manifest["step"]), float(manifest.get("training_wall_s") or 0.0))


def select_trainable(model: torch.nn.Module, patterns) -> list[torch.nn.Parameter]:
    """The parameters to optimise: those whose name matches one of ``patterns`` (fnmatch; None =
    all), among those the task left trainable; the others are frozen."""
    if patterns:
        names = [n for n, _ in model.named_parameters()]
        for pattern in patterns:
            if not fnmatch.filter(names, pattern):
                raise UserError(f"train.trainable: '{pattern}' matches no parameter; names look like {names[:3]}")
        for name, p in model.named_parameters():
            if not any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
                p.requires_grad_(False)
    chosen = [p for p in model.parameters() if p.requires_grad]
    if not chosen:
        raise UserError("no parameter is trainable; check train.trainable")
    return chosen


def optimizer_groups(model: torch.nn.Module, trainable: list[torch.nn.Parameter], groups, lr: float,
                     weight_decay: float) -> list[dict]:
    """AdamW's parameter groups: the trainable parameters no pattern of ``train.param_groups`` claims at
    ``lr`` and ``weight_decay`` (first), then one group per entry (fnmatch on parameter names). A pattern
    that matches no trainable parameter, or two patterns claiming one parameter, is an error."""
    if not groups:
        return [{"params": list(trainable), "lr": lr, "weight_decay": weight_decay}]
    chosen = {id(p) for p in trainable}
    named = [(n, p) for n, p in model.named_parameters() if id(p) in chosen]
    claimed: dict[str, str] = {}
    out = []
    for g in groups:
        members = [(n, p) for n, p in named if fnmatch.fnmatchcase(n, g.pattern)]
        if not members:
            raise UserError(f"train.param_groups: '{g.pattern}' matches no trainable parameter; "
                            f"names look like {[n for n, _ in named[:3]]}")
        for n, _ in members:
            if n in claimed:
                raise UserError(f"train.param_groups: '{g.pattern}' claims '{n}', which '{claimed[n]}' already "
                                "claims; make the patterns disjoint")
            claimed[n] = g.pattern
        wd = weight_decay if g.weight_decay is None else g.weight_decay
        out.append({"params": [p for _, p in members], "lr": g.lr, "weight_decay": wd, "pattern": g.pattern})
    rest = [p for n, p in named if n not in claimed]
    return ([{"params": rest, "lr": lr, "weight_decay": weight_decay, "pattern": "default"}] if rest else []) + out


def group_lrs(opt: torch.optim.Optimizer) -> dict[str, float]:
    """The current lr of each named parameter group (``lr/<pattern>``), for the metrics log."""
    return {f"lr/{g['pattern']}": g["lr"] for g in opt.param_groups if "pattern" in g}


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


def use_cpu() -> bool:
    """Train on CPU: asked for (ACCELERATE_USE_CPU), or several processes launched without GPUs
    (torchrun / accelerate launch on CPU machines then train together over gloo)."""
    asked = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return asked or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())


def check_launch(num_processes: int) -> None:
    """Refuse a launch whose processes would each train alone (and all write the same run)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != num_processes:
        raise UserError(f"launched as {launched} processes, but they do not train together ({num_processes} in the "
                        "process group): each would train its own copy into the same run; launch with torchrun or "
                        "`accelerate launch`, and on GPUs give every process a device")


def process_state() -> PartialState:
    """This process's place in a distributed launch (one process when not launched)."""
    return PartialState(cpu=use_cpu())


def train(cfg: DictConfig, job: TrainingJob, run_dir: str | Path, progress: bool = True) -> TrainResult:
    """Train ``job`` under ``cfg.train`` into ``run_dir``, resuming from its newest readable
    checkpoint; the main process holds the run's lock meanwhile."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir) if process_state().is_main_process else nullcontext():
        return _train(cfg, job, run_dir, progress)


def _train(cfg: DictConfig, job: TrainingJob, run_dir: Path, progress: bool) -> TrainResult:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    return _TrainingLoop(cfg, job, run_dir).run(progress)


class _TrainingLoop:
    """One training of ``job`` into ``run_dir``: set up (accelerator, optimizer, lr schedule, EMA) and restored
    (``train.init_from``, or the newest readable checkpoint) on creation; :meth:`run` trains to the end."""

    def __init__(self, cfg: DictConfig, job: TrainingJob, run_dir: Path):
        self.cfg, self.tc, self.job, self.run_dir = cfg, cfg.train, job, run_dir
        tc = self.tc
        acc = self.acc = Accelerator(cpu=use_cpu(), mixed_precision=tc.mixed_precision, log_with="tensorboard",
                                     project_dir=str(run_dir))
        acc.init_trackers("tensorboard")
        check_launch(acc.num_processes)
        trainable = select_trainable(job.model, tc.trainable)
        groups = optimizer_groups(job.model, trainable, tc.param_groups, tc.lr, tc.weight_decay)
        trainable = [p for g in groups for p in g["params"]]  # in the optimizer's order (its checkpointed state)
        loaded = newest_readable(run_dir, acc.process_index, bool(tc.ema_decay), say=acc.print,
                                 expect=ExpectedShapes.of(job.model, trainable, [len(g["params"]) for g in groups]))
        init = None
        if loaded is None and tc.init_from:
            init = init_weights(job.model, tc.init_from, tc.init_continue)
            acc.print(f"starting from the weights in {init.folder}")
        elif tc.init_continue and not tc.init_from:
            raise UserError("train.init_continue needs train.init_from=EXPORT (the export to go on from)")
        opt = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
        lr_sched = get_scheduler(tc.lr_schedule, opt, num_warmup_steps=tc.warmup_steps, num_training_steps=tc.max_steps)
        continued = init is not None and tc.init_continue
        if continued:
            with warnings.catch_warnings():  # stepped before any optimizer step, on purpose
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(init.step):
                    lr_sched.step()
        self.model, self.opt, self.lr_sched = acc.prepare(job.model, opt, lr_sched)
        self.ema = EMAModel(self.inner.parameters(), decay=tc.ema_decay) if tc.ema_decay else None
        self.state = TrainState()
        if continued:
            self._continue_from(init)
        if loaded is not None:
            self._resume(loaded)

    @property
    def inner(self) -> torch.nn.Module:
        """The model without the accelerator's wrapper."""
        return self.acc.unwrap_model(self.model)

    def _objects(self) -> dict:
        return dict(model=self.inner, optimizer=self.opt, lr_scheduler=self.lr_sched, ema=self.ema,
                    scaler=self.acc.scaler)

    def _continue_from(self, init: InitWeights) -> None:
        """``train.init_continue``: the export's EMA weights into the EMA, its step and time into the counters."""
        if self.ema is not None:
            self.ema.shadow_params = [init.ema_state[name].to(p.device, p.dtype).clone()
                                      for name, p in self.inner.named_parameters()]
            self.ema.optimization_step = init.step  # the EMA's decay warm-up is over too
        self.state.step, self.state.elapsed_s = init.step, init.elapsed_s
        self.acc.print(f"continuing from step {init.step} of {self.tc.init_from} (lr schedule and step count go on; "
                       "the optimizer starts fresh: exports hold no optimizer state)")

    def _resume(self, loaded) -> None:
        """Everything from the checkpoint; the metrics logged after its step are dropped (they are replayed)."""
        state, acc = self.state, self.acc
        state.load_state_dict(apply_checkpoint(loaded, **self._objects()))
        if acc.is_main_process:
            dropped = truncate_metrics(self.run_dir, state.step)
            if dropped:
                acc.print(f"dropped {dropped} lines of {METRICS} logged after step {state.step} (replayed now)")
        acc.print(f"resuming {self.run_dir} from step {state.step}")

    def checkpoint(self) -> Path:
        acc = self.acc
        path = self.run_dir / CHECKPOINTS / f"step_{self.state.step:08d}"
        acc.wait_for_everyone()
        if acc.is_main_process and path.exists():
            shutil.rmtree(path)
        acc.wait_for_everyone()
        save_checkpoint(path, **self._objects(), counters=self.state.state_dict(), rank=acc.process_index,
                        is_main=acc.is_main_process)
        acc.wait_for_everyone()
        if acc.is_main_process:
            remove_old(self.run_dir, self.tc.keep_checkpoints)
        return path

    def validate(self) -> None:
        """``job.validate`` with the EMA weights; a new best monitored value saves the best weights."""
        job, state, inner = self.job, self.state, self.inner
        with ema_weights(inner, self.ema), frozen(inner):
            metrics = job.validate(inner)
            value = metrics.get(job.monitor)
            if value is None:
                raise TrainingError(f"validate() returned {sorted(metrics)}, without the monitored '{job.monitor}'")
            if self.acc.is_main_process and (state.best is None or value < state.best):
                state.best = float(value)
                save_model(inner, self.run_dir / BEST_WEIGHTS)
        self.log({**metrics, "best_" + job.monitor: state.best})

    def log(self, metrics: dict) -> None:
        self.acc.log(metrics, step=self.state.step)
        if self.acc.is_main_process:
            with (self.run_dir / METRICS).open("a") as f:
                f.write(json.dumps({"step": self.state.step, **metrics}) + "\n")

    def optimizer_step(self, batches: Iterator, accum: int) -> torch.Tensor:
        """One optimizer step over ``accum`` micro-batches (gradients summed); returns the last micro-batch's loss."""
        acc, model, state = self.acc, self.model, self.state
        for micro in range(accum):
            batch, gen = next(batches)
            sync = acc.no_sync(model) if micro < accum - 1 else nullcontext()
            with sync, acc.autocast():
                loss, _ = self.job.loss_fn(model, batch, gen)
            if not torch.isfinite(loss):
                last = latest_checkpoint(self.run_dir)
                raise TrainingError(
                    f"loss is {loss.item()} at step {state.step}; training stopped, last good checkpoint: "
                    f"{last or 'none'}. Lower train.lr or set train.grad_clip, then rerun to resume."
                )
            acc.backward(loss / accum)
        if self.tc.grad_clip:
            acc.clip_grad_norm_(model.parameters(), self.tc.grad_clip)
        self.opt.step()
        self.lr_sched.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.inner.parameters())
        state.step += 1
        if self.job.after_step is not None:
            self.job.after_step(self.inner, state.step)
        return loss

    def run(self, progress: bool) -> TrainResult:
        """Train until ``train.max_steps`` or ``train.max_minutes``, or until asked to stop (Ctrl-C, SIGTERM);
        a checkpoint and the last (EMA) weights are saved in every case."""
        tc, state, acc = self.tc, self.state, self.acc
        accum = max(1, tc.grad_accum_steps)
        stopped = "max_steps"
        window = _Window()
        bar = tqdm(total=tc.max_steps, initial=state.step, desc=f"train {self.run_dir.name}",
                   disable=not progress or not acc.is_main_process)
        self.model.train()
        batches = micro_batches(self.job, self.cfg.seed, acc.process_index, state.step * accum, tc.max_steps * accum,
                                tc.num_workers)
        with _StopFlag() as stop:
            while state.step < tc.max_steps:
                if tc.max_minutes is not None and state.elapsed_s >= 60 * tc.max_minutes:
                    stopped = "max_minutes"
                    break
                if stop.requested:
                    stopped = "interrupted"
                    break
                t0 = time.perf_counter()
                loss = self.optimizer_step(batches, accum)
                state.elapsed_s += time.perf_counter() - t0
                window.add(loss.item())
                bar.update(1)
                self._after_step(window, bar)
        bar.close()
        self.checkpoint()
        if acc.is_main_process:
            with ema_weights(self.inner, self.ema):
                save_model(self.inner, self.run_dir / LAST_WEIGHTS)
        acc.end_training()
        if stopped == "interrupted":
            acc.print(f"interrupted at step {state.step}; checkpoint saved — run the same command again to resume")
        return TrainResult(self.run_dir, state.step, stopped, state.best, state.elapsed_s)

    def _after_step(self, window: _Window, bar) -> None:
        """What follows an optimizer step when it is due: the log line, validation, a checkpoint."""
        tc, state = self.tc, self.state
        if state.step % tc.log_every == 0 or state.step == tc.max_steps:
            avg, rate = window.flush()
            bar.set_postfix(loss=f"{avg:.4f}", it_s=f"{rate:.1f}")
            self.log({"loss": avg, "lr": self.lr_sched.get_last_lr()[0], **group_lrs(self.opt), "steps_per_s": rate,
                      "elapsed_s": state.elapsed_s})
        if self.job.validate is not None and tc.validate_every and state.step % tc.validate_every == 0:
            t1 = time.perf_counter()
            self.validate()
            state.elapsed_s += time.perf_counter() - t1
            window.start += time.perf_counter() - t1  # keep steps/s about training steps
        if state.step % tc.checkpoint_every == 0:
            self.checkpoint()


class _Window:
    """The training loss and speed since the last log line."""

    def __init__(self):
        self.loss, self.steps, self.start = 0.0, 0, time.perf_counter()

    def add(self, loss: float) -> None:
        self.loss += loss
        self.steps += 1

    def flush(self) -> tuple[float, float]:
        """(mean loss, steps per second) of the window, which then starts anew."""
        now = time.perf_counter()
        out = self.loss / self.steps, self.steps / max(now - self.start, 1e-9)
        self.loss, self.steps, self.start = 0.0, 0, now
        return out
