"""A refused trainer leaves the run as it was; --restart removes only what refusing allows; paths a user
gets wrong are one-line errors; Ctrl-C exits 130 (issue 38)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from gencond import cli
from gencond.registry import COMMANDS, TASKS, Command, register_task


def train(*argv) -> int:
    return cli.main(["train", *map(str, argv), "--quiet"])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("gencond ") and "\n" not in err and "Traceback" not in err, err
    return err


def snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture
def locked_run(tmp_path):
    """runs/toy holding a config and locked by another process, as while a first trainer runs."""
    run = tmp_path / "runs" / "toy"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("# the running trainer's config\n")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from gencond.runs import RunLock\n"
        f"with RunLock({str(run)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield run
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- 1: nothing is written before the lock


def test_a_refused_trainer_does_not_rewrite_the_running_runs_config(toy_config, locked_run, capsys):
    before = snapshot(locked_run)
    assert train(toy_config, f"runs_dir={locked_run.parent}", "train.batch_size=4") == 2
    assert "is being trained by process" in one_line_error(capsys)
    assert snapshot(locked_run) == before


def test_a_bad_config_writes_nothing(toy_config, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train(toy_config, f"runs_dir={runs}", "train.checkpoint_every=0") == 2
    assert "'train.checkpoint_every': 0; allowed: an integer ≥ 1" in one_line_error(capsys)
    assert not runs.exists()


# ---------------------------------------------------------------- 2: --restart follows the rules of refusing


def test_restart_through_a_symlink_does_not_empty_the_run_it_points_to(toy_config, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    assert train(toy_config, f"runs_dir={elsewhere}", "train.max_steps=2") == 0
    (elsewhere / "toy" / "precious.txt").write_text("keep me")
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "toy").symlink_to(elsewhere / "toy")
    before = snapshot(elsewhere / "toy")
    capsys.readouterr()
    assert train(toy_config, f"runs_dir={runs}", "--restart") == 2
    assert "symlink" in one_line_error(capsys)
    assert snapshot(elsewhere / "toy") == before


@pytest.mark.parametrize("through_link", [False, True])
def test_a_refused_restart_creates_no_lock(toy_config, tmp_path, capsys, through_link):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    runs = tmp_path / "runs"
    runs.mkdir()
    if through_link:
        (runs / "toy").symlink_to(folder)
    else:
        folder = folder.rename(runs / "toy")
    assert train(toy_config, f"runs_dir={runs}", "--restart") == 2
    one_line_error(capsys)
    assert sorted(p.name for p in folder.iterdir()) == ["precious.txt"]


# ---------------------------------------------------------------- 4 and 11: Ctrl-C


def _interrupting_task():
    """'toy-ctrl-c': the toy task, with Ctrl-C pressed during micro-step 3."""
    from gencond.config import RunConfig
    from gencond.training import TrainingJob

    from .conftest import register_toy_task

    register_toy_task()
    toy = TASKS["toy-mlp"].build

    def build(cfg):
        job = toy(cfg)
        inner = job.batch_fn

        def batch_fn(step, g):
            if step == 3:
                signal.raise_signal(signal.SIGINT)
            return inner(step, g)

        return TrainingJob(job.model, batch_fn, job.loss_fn)

    if "toy-ctrl-c" not in TASKS:
        register_task("toy-ctrl-c", RunConfig, build)


def test_ctrl_c_during_training_exits_130_after_the_checkpoint(toy_config, tmp_path, capsys):
    _interrupting_task()
    runs = tmp_path / "runs"
    assert train(toy_config, f"runs_dir={runs}", "task=toy-ctrl-c", "train.max_steps=20") == 130
    err = capsys.readouterr().err.strip()
    assert err == "gencond train: interrupted at step 4, checkpoint saved; rerun the same command to resume"
    assert (runs / "toy" / "checkpoints" / "step_00000004" / "trainer_state.json").is_file()


def test_ctrl_c_in_any_verb_is_one_line_and_exit_130(monkeypatch, capsys):
    cli.build_parser()  # registers the domains' verbs

    def run(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(COMMANDS, "forecast", Command("forecast", "", lambda p: None, run, COMMANDS["forecast"].module))
    assert cli.main(["forecast"]) == 130
    assert capsys.readouterr().err == "gencond forecast: interrupted; rerun the same command to resume\n"


# ---------------------------------------------------------------- 5: folders and paths


def test_runs_dir_that_is_a_file(toy_config, tmp_path, capsys):
    (tmp_path / "runs").write_text("not a folder")
    assert train(toy_config, f"runs_dir={tmp_path / 'runs'}") == 2
    assert "is a file, not a folder" in one_line_error(capsys)


def test_a_run_name_over_the_file_systems_limit(toy_config, tmp_path, capsys):
    assert train(toy_config, f"runs_dir={tmp_path}", f"name={'x' * 300}") == 2
    assert "at most 255" in one_line_error(capsys)


def test_a_dangling_symlink_run(toy_config, tmp_path, capsys):
    (tmp_path / "toy").symlink_to(tmp_path / "gone")
    assert train(toy_config, f"runs_dir={tmp_path}") == 2
    assert "which does not exist" in one_line_error(capsys)
    assert not (tmp_path / "gone").exists()


def test_a_read_only_run_is_refused_before_training(toy_config, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    assert train(toy_config, f"runs_dir={runs}", "train.max_steps=2") == 0
    read_only = str(runs / "toy" / "checkpoints")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == read_only else real_access(p, mode))
    capsys.readouterr()
    assert train(toy_config, f"runs_dir={runs}", "train.max_steps=4") == 2
    assert "cannot write to" in one_line_error(capsys)
    assert not (runs / "toy" / "checkpoints" / "step_00000004").exists()  # refused before training


def test_a_file_system_error_in_any_verb_is_one_line(monkeypatch, capsys):
    cli.build_parser()

    def run(args):
        raise PermissionError(13, "Permission denied", "/somewhere/metrics.json")

    monkeypatch.setitem(COMMANDS, "forecast", Command("forecast", "", lambda p: None, run, COMMANDS["forecast"].module))
    assert cli.main(["forecast"]) == 2
    assert one_line_error(capsys) == "gencond forecast: error: /somewhere/metrics.json: Permission denied"


# ---------------------------------------------------------------- 7: well-formed but wrong checkpoints fall back


def _damage_state(value):
    def damage(ckpt):
        (ckpt / "trainer_state.json").write_text(json.dumps(value(json.loads((ckpt / "trainer_state.json").read_text()))))
    return damage


def _other_model_keys(ckpt):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(ckpt / "model.safetensors"))
    save_file({f"other.{k}": v for k, v in tensors.items()}, str(ckpt / "model.safetensors"))


def _wrong_optimizer_shapes(ckpt):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    save_file({k: v.reshape(-1)[:1].repeat(3) if v.ndim else v for k, v in tensors.items()}, str(ckpt / "optimizer.safetensors"))


@pytest.mark.parametrize("damage", [
    _damage_state(lambda s: {}), _damage_state(lambda s: []), _damage_state(lambda s: "step"),
    _damage_state(lambda s: {**s, "step": "4"}), _damage_state(lambda s: {**s, "step": 3}),
    _damage_state(lambda s: {**s, "optimizer": None}), _other_model_keys, _wrong_optimizer_shapes,
], ids=["empty", "list", "string", "string-step", "other-step", "no-optimizer", "model-keys", "optimizer-shapes"])
def test_a_wrong_checkpoint_falls_back_to_the_previous_one(toy_config, tmp_path, capsys, damage):
    runs = tmp_path / "runs"
    assert train(toy_config, f"runs_dir={runs}", "train.max_steps=4") == 0
    damage(runs / "toy" / "checkpoints" / "step_00000004")
    capsys.readouterr()
    assert train(toy_config, f"runs_dir={runs}", "train.max_steps=6") == 0
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and "step_00000004" in out and "from step 2" in out
    steps = [json.loads(line)["step"] for line in (runs / "toy" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
