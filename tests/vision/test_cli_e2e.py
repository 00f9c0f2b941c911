"""A tiny end-to-end run on sklearn digits through the CLI: train, sample, eval."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from gencond.cli import main
from gencond.config import load_config

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "vision" / "digits_tiny.yaml")


def test_train_sample_eval_on_digits(tmp_path, fd_cache, capsys):
    assert main(["train", CONFIG, f"runs_dir={tmp_path}", "ddae.feature_conditioning=true", "--quiet"]) == 0
    run = tmp_path / "digits_tiny"
    assert (run / "model" / "config.json").is_file() and (run / "best" / "config.json").is_file()
    assert json.loads((run / "model" / "config.json").read_text())["feature_conditioning"] is True

    assert main(["sample", str(run), "--num", "9", "--quiet", "--out", str(tmp_path / "grid.png")]) == 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (8 * (3 * 9 + 1), 8 * (3 * 9 + 1))  # 3 x 3 tiles of 8 px, 1 px padding, shown 8x

    assert main(["eval", str(run), "--quiet", "--probe-blocks", "0,2", "--probe-timesteps", "5,50",
                 "--fd-samples", "48", "--out", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    grid = result["linear_probe"]["grid"]
    assert sorted((r["block"], r["t"]) for r in grid) == [(0, 5), (0, 50), (2, 5), (2, 50)]
    assert result["linear_probe"]["best_accuracy"] > 0.2  # chance is 0.1; 40 training steps
    base = result["linear_probe"]["baselines"]  # the rows every probe figure is read against
    assert sorted(base) == ["pooled_raw_patches_2x2", "raw_pixels"] and base["raw_pixels"] > 0.85  # 8x8 digits
    assert base["pooled_raw_patches_2x2"] < base["raw_pixels"]  # pooling throws away where the ink is
    assert result["linear_probe"]["beats_raw_pixels"] == (result["linear_probe"]["best_accuracy"] > base["raw_pixels"])
    fd = result["frechet"]
    assert fd["metric"] == "FD-DIGITS-classifier" and fd["samples"] == 48 and fd["value"] > 0
    acc = fd["feature_classifier_test_accuracy"]
    assert acc > 0.7  # 60 classifier steps; 0.43 before the 8x8 recipe fix (wrapped 2-px shifts)
    assert fd["reliable"] == (acc >= 0.9) and ("warning" in fd) == (acc < 0.9)
    assert "FD-DIGITS-classifier" in capsys.readouterr().out

    exported = tmp_path / "exported"  # an export samples exactly as its run
    assert main(["export", str(run), "--out", str(exported)]) == 0
    assert main(["sample", str(exported), "--num", "9", "--quiet", "--out", str(tmp_path / "grid2.png")]) == 0
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "grid2.png").read_bytes()


def test_class_conditional_with_cfg(tmp_path, capsys):
    assert main(["train", CONFIG, f"runs_dir={tmp_path}", "name=cond", "model.class_conditional=true",
                 "diffusion.cond_drop_prob=0.2", "train.max_steps=10", "train.validate_every=0", "--quiet"]) == 0
    out = tmp_path / "three.png"
    assert main(["sample", str(tmp_path / "cond"), "--num", "4", "--label", "3", "--cfg-scale", "2", "--quiet",
                 "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["sample", str(tmp_path / "cond"), "--label", "12", "--quiet"]) == 2
    assert "--label 12 is not a class of this run (0..9" in capsys.readouterr().err


def test_contrastive_self_distillation_loss_and_teacher(tmp_path):
    from vision.task import build

    cfg = load_config(CONFIG, ["ddae.contrastive=true", "ddae.feature_conditioning=true", "ddae.contrastive_max_t=1000",
                               "model.arch=dit", "model.depth=4"])
    job = build(cfg)
    model = job.model
    assert model.teacher is not None
    before = [p.clone() for p in model.teacher.parameters()]
    gen = torch.Generator().manual_seed(0)
    loss, metrics = job.loss_fn(model, job.batch_fn(0, gen), gen)
    assert torch.isfinite(loss) and metrics["contrastive"] > 0
    loss.backward()
    assert model.predictor[0].weight.grad.abs().sum() > 0  # the contrastive loss trains the student's heads
    assert all(p.grad is None for p in model.teacher.parameters())  # the teacher only follows by EMA
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(torch.randn_like(p) * 0.01)
    job.loss_fn(model, job.batch_fn(1, gen), gen)
    assert all(torch.equal(a, b) for a, b in zip(before, model.teacher.parameters()))  # not per micro-batch
    job.after_step(model, 1)  # once per optimizer step
    assert any(not torch.equal(a, b) for a, b in zip(before, model.teacher.parameters()))


@pytest.mark.parametrize("override, message", [
    ("model.arch=vit", "override 'model.arch=vit': bad value for 'model.arch': 'vit'; allowed: one of uvit, dit"),
    ("data.image_size=28", "dataset 'digits' images are 8x8 with 1 channel(s), but the config expects 28x28"),
    ("model.patch_size=3", "image size 8 is not a multiple of model.patch_size 3"),
])
def test_bad_config_is_a_one_line_cli_error(tmp_path, capsys, override, message):
    assert main(["train", CONFIG, f"runs_dir={tmp_path}", override, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gencond train: error: ") and message in err and "\n" not in err


def test_the_teacher_moves_once_per_optimizer_step_under_gradient_accumulation(tmp_path, monkeypatch):
    from vision.models import _PatchDenoiser

    moves = []
    original = _PatchDenoiser.update_teacher
    monkeypatch.setattr(_PatchDenoiser, "update_teacher", lambda self, m: (moves.append(m), original(self, m)))
    assert main(["train", CONFIG, f"runs_dir={tmp_path}", "ddae.contrastive=true", "train.max_steps=3",
                 "train.grad_accum_steps=2", "train.validate_every=0", "--quiet"]) == 0
    assert len(moves) == 3


def test_validation_logs_the_probe_curve_of_a_long_run(tmp_path):
    """eval.validation_probe_images: every validation also logs the linear probe's accuracy (above chance on
    digits after 40 steps) with the block and timestep it was best at; off by default."""
    assert main(["train", CONFIG, f"runs_dir={tmp_path}", "name=probed", "eval.validation_probe_images=300",
                 "--quiet"]) == 0
    assert main(["train", CONFIG, f"runs_dir={tmp_path}", "name=plain", "train.max_steps=20", "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "probed" / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in rows if "probe_acc" in r]
    assert [r["step"] for r in probes] == [20, 40]
    assert all(r["probe_t"] == 10 and r["probe_block"] in (1, 2) for r in probes)  # 3 blocks: from block 1 on
    assert probes[-1]["probe_acc"] > 0.15  # chance 0.1 (3 standard errors at 300 test images)
    plain = (tmp_path / "plain" / "metrics.jsonl").read_text()
    assert "val_loss" in plain and "probe_acc" not in plain
