"""The distributed path: two real processes (gloo on CPU) train together, checkpoint, resume, and
match one process that sees the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gencond import cli
from gencond.errors import UserError
from gencond.training import check_launch

from .toys import register_ddp_toy_task

LAUNCHER = Path(__file__).with_name("ddp_launch.py")
CONFIG = """task: toy-ddp
diffusion: {num_train_timesteps: 50, cond_drop_prob: 0.3, self_condition_prob: 0.5}
train: {max_steps: 4, batch_size: 8, log_every: 1, checkpoint_every: 2, threads: 1, lr: 0.01, ema_decay: 0.9}
"""


def torchrun(*args, cwd) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(LAUNCHER), "train", *map(str, args), "--quiet"]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_two_processes_train_resume_and_match_one_process_with_the_global_batch(tmp_path):
    (tmp_path / "toy.yaml").write_text(CONFIG)
    runs = tmp_path / "runs"
    first = torchrun("toy.yaml", f"runs_dir={runs}", "name=ddp", "train.max_steps=2", cwd=tmp_path)
    assert first.count("world=2 model=DistributedDataParallel") == 2  # both ranks, the model wrapped
    second = torchrun(runs / "ddp", "train.max_steps=4", cwd=tmp_path)
    assert "resuming" in second and "from step 2" in second
    ckpt = runs / "ddp" / "checkpoints" / "step_00000004"
    assert (ckpt / "rng_0.safetensors").exists() and (ckpt / "rng_1.safetensors").exists()
    steps = [json.loads(line)["step"] for line in (runs / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # only rank 0 logs

    register_ddp_toy_task()
    torch.set_num_threads(1)
    assert cli.main(["train", str(tmp_path / "toy.yaml"), f"runs_dir={runs}", "name=single", "ranks_in_batch=2", "--quiet"]) == 0
    a = load_file(str(runs / "ddp" / "model" / "model.safetensors"))
    b = load_file(str(runs / "single" / "model" / "model.safetensors"))
    for k in a:  # same updates up to float summation order
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_a_launch_whose_processes_would_train_alone_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="launched as 2 processes, but they do not train together"):
        check_launch(1)
    check_launch(2)
