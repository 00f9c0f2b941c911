"""Run folders: --restart only removes runs, resume is exact and safe, the log and lock hold."""
import json
import os
import subprocess
import sys

import pytest

from gencond import cli
from gencond.errors import UserError
from gencond.runs import RunLock, claim_output, truncate_metrics



def train(*argv) -> int:
    return cli.main(["train", *map(str, argv), "--quiet"])


def test_run_name_must_be_a_plain_name(toy_config, tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    assert train(toy_config, f"name={victim}", "--restart") == 2
    assert train(toy_config, f"runs_dir={victim}/runs", "name=..", "--restart") == 2
    assert "must be a plain folder name" in capsys.readouterr().err
    assert (victim / "precious.txt").read_text() == "keep me"


def test_restart_removes_only_a_gencond_run(toy_config, tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "toy").mkdir(parents=True)
    (runs / "toy" / "precious.txt").write_text("keep me")
    assert train(toy_config, f"runs_dir={runs}", "--restart") == 2
    assert "is not a gencond run" in capsys.readouterr().err
    assert (runs / "toy" / "precious.txt").exists()
    (runs / "toy" / "precious.txt").unlink()
    assert train(toy_config, f"runs_dir={runs}") == 0
    assert train(toy_config, f"runs_dir={runs}", "--restart") == 0
    assert "--restart: removing" in capsys.readouterr().out


def test_a_run_folder_resumes_where_it_is(toy_config, tmp_path, monkeypatch):
    import shutil

    runs = tmp_path / "runs"
    assert train(toy_config, f"runs_dir={runs}", "train.max_steps=4") == 0
    copy = tmp_path / "elsewhere" / "copied"
    shutil.copytree(runs / "toy", copy)
    monkeypatch.chdir(tmp_path / "elsewhere")  # runs_dir in the saved config is relative to nothing here
    assert train(copy, "train.max_steps=6") == 0
    steps = [json.loads(line)["step"] for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # resumed the copy from step 4, not a new run from 0
    assert [json.loads(line)["step"] for line in (runs / "toy" / "metrics.jsonl").read_text().splitlines()][-1] == 4
    assert not (tmp_path / "elsewhere" / "runs").exists()


def test_a_malicious_pickle_in_a_checkpoint_is_never_loaded(toy_config, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train(toy_config, f"runs_dir={runs}", "train.max_steps=2") == 0
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    legacy = runs / "toy" / "checkpoints" / "step_00000004"  # newer than the real one, in the old format
    legacy.mkdir()
    torch.save(Evil(), legacy / "custom_checkpoint_0.pkl")
    (legacy / "complete").write_text("{}")
    assert train(toy_config, f"runs_dir={runs}", "train.max_steps=4") == 0
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and "pickle" in out and "resuming" in out and "from step 2" in out
    assert not marker.exists()
    for f in (runs / "toy" / "checkpoints" / "step_00000002").iterdir():
        assert f.suffix in (".safetensors", ".json"), f  # nothing pickled is written either


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(toy_config, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train(toy_config, f"runs_dir={runs}", "train.max_steps=4") == 0
    newest = runs / "toy" / "checkpoints" / "step_00000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    capsys.readouterr()
    assert train(toy_config, f"runs_dir={runs}", "train.max_steps=6") == 0
    out = capsys.readouterr().out
    assert "skipping checkpoint" in out and "step_00000004" in out and "from step 2" in out
    # every checkpoint unreadable: a one-line error, not a silent restart
    for ckpt in (runs / "toy" / "checkpoints").iterdir():
        (ckpt / "optimizer.safetensors").write_bytes(b"garbage")
    assert train(toy_config, f"runs_dir={runs}", "train.max_steps=8") == 2
    assert "can be loaded" in capsys.readouterr().err


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo')
    assert truncate_metrics(tmp_path, 4) == 4
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]


def test_after_kill_9_the_log_has_each_step_once(toy_config, tmp_path):
    runs = tmp_path / "runs"
    assert train(toy_config, f"runs_dir={runs}", "train.max_steps=4") == 0
    log = runs / "toy" / "metrics.jsonl"
    # as if killed at step 6, with checkpoint 4 the newest: steps 5 and 6 were logged and are replayed
    with log.open("a") as f:
        f.write(json.dumps({"step": 5, "loss": 9.0}) + "\n" + json.dumps({"step": 6, "loss": 9.0}) + "\n")
    assert train(toy_config, f"runs_dir={runs}", "train.max_steps=6") == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(r["loss"] != 9.0 for r in rows)


def test_a_second_trainer_on_the_same_run_is_refused(toy_config, tmp_path, capsys):
    runs = tmp_path / "runs"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from gencond.runs import RunLock\n"
        f"with RunLock({str(runs / 'toy')!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train(toy_config, f"runs_dir={runs}") == 2
        err = capsys.readouterr().err.strip()
        assert f"is being trained by process {holder.pid}" in err and "\n" not in err
    finally:
        holder.kill()
        holder.wait()
    with RunLock(runs / "toy"):  # the kernel released the dead holder's lock
        pass


def test_a_malformed_override_is_one_line(toy_config, capsys):
    assert train(toy_config, "train.max_steps=[1,") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gencond train: error:") and "train.max_steps=[1," in err and "\n" not in err


def test_a_run_saved_before_a_key_existed_still_resumes(toy_config, tmp_path):
    runs = tmp_path / "runs"
    assert train(toy_config, f"runs_dir={runs}", "train.max_steps=2") == 0
    saved = runs / "toy" / "config.yaml"
    saved.write_text(saved.read_text().replace("  min_snr_gamma: null\n", ""))  # as if written by an older gencond
    assert train(runs / "toy", "train.max_steps=4") == 0


def test_an_output_folder_is_resumed_only_by_the_same_job(tmp_path):
    path = tmp_path / "out" / "identity.json"
    claim_output(path, {"seed": 0, "steps": (25,)}, "forecast")  # tuples are compared as JSON lists
    claim_output(path, {"seed": 0, "steps": [25]}, "forecast")
    with pytest.raises(UserError, match=r"out holds another forecast \(seed 0 -> 1; steps \[25\] -> None\)"):
        claim_output(path, {"seed": 1}, "forecast")
    assert json.loads(path.read_text()) == {"seed": 0, "steps": [25]}  # the first job's identity is kept
