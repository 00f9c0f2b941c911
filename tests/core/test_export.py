"""`gencond export`: a run as a self-contained model folder that every verb takes, checked at load."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gencond.cli import main
from gencond.errors import UserError
from gencond.export import CARD, EXPORT, check_export
from gencond.runs import load_run

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "timeseries" / "tiny.yaml")
TINY = ["train.threads=1", "train.validate_every=0", "forecast.num_samples=4", "sampling.num_steps=5",
        "train.checkpoint_every=5"]


def _train(runs: Path, name: str, *extra: str) -> Path:
    assert main(["train", CONFIG, f"runs_dir={runs}", f"name={name}", "--quiet", *TINY, *extra]) == 0
    return runs / name


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("runs"), "ema", "train.max_steps=10", "train.ema_decay=0.9",
                  "train.lr_schedule=cosine", "train.warmup_steps=2")


def _forecast(model_dir: Path, out: Path) -> str:
    assert main(["forecast", str(model_dir), "--quiet", "--seed", "3", "--threads", "1", "--out", str(out)]) == 0
    return (out / "forecasts.csv").read_text()


def test_export_writes_a_checked_model_folder_that_forecasts_like_the_run(ema_run, tmp_path, monkeypatch):
    out = tmp_path / "pretrained" / "tiny"
    assert main(["export", str(ema_run), "--out", str(out), "--weights", "last", "--metric", "CRPS=0.5",
                 "--measured-by", "gencond forecast X"]) == 0
    manifest = check_export(out)
    assert manifest["task"] == "tsdiff" and manifest["step"] == 10 and manifest["ema"] and manifest["raw_weights"]
    assert sorted(manifest["files"]) == ["config.yaml", "model/config.json",
                                         "model/diffusion_pytorch_model.safetensors", "raw/model.safetensors"]
    card = (out / CARD).read_text()
    assert "| CRPS | 0.5 |" in card and "gencond forecast X" in card
    assert all(h in card for h in manifest["files"].values())  # the sha256 of every file
    ckpt = sorted((ema_run / "checkpoints").iterdir())[-1]
    raw, exported_raw = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "raw" / "model.safetensors"))
    assert all(torch.equal(raw[k], exported_raw[k]) for k in raw)
    # the EMA weights, through the one run loader, forecast the same samples as the run itself
    monkeypatch.setenv("GENCOND_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert _forecast(ema_run, tmp_path / "f_run") == _forecast(out, tmp_path / "f_export")
    assert not any(p.name == "forecasts" for p in out.rglob("*"))  # nothing written into the export
    check_export(out)


def test_float16_export_is_half_the_size_and_loads_as_float32(ema_run, tmp_path):
    out = tmp_path / "half"
    assert main(["export", str(ema_run), "--out", str(out), "--dtype", "float16"]) == 0
    assert json.loads((out / EXPORT).read_text())["dtype"] == "float16"
    _, run_model = load_run(ema_run, "last")
    _, model = load_run(out)
    for (name, a), b in zip(run_model.state_dict().items(), model.state_dict().values()):
        assert b.dtype == a.dtype, name
        torch.testing.assert_close(b, a.half().to(a.dtype), rtol=0, atol=0)


def test_training_continues_from_an_export_with_step_and_schedule(ema_run, tmp_path, capsys):
    full = _train(tmp_path / "runs", "full", "train.max_steps=14", "train.ema_decay=0.9", "train.lr_schedule=cosine",
                  "train.warmup_steps=2")
    out = tmp_path / "x"
    assert main(["export", str(ema_run), "--out", str(out), "--weights", "last"]) == 0
    capsys.readouterr()
    cont = _train(tmp_path / "runs", "cont", "train.max_steps=14", "train.ema_decay=0.9", "train.lr_schedule=cosine",
                  "train.warmup_steps=2", f"train.init_from={out}", "train.init_continue=true")
    said = capsys.readouterr().out
    assert "continuing from step 10" in said and "the optimizer starts fresh" in said
    rows = [json.loads(line) for line in (cont / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] > 10 and rows[-1]["step"] == 14
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (full / "metrics.jsonl").read_text().splitlines()) if "lr" in r}
    assert all(r["lr"] == pytest.approx(lrs[r["step"]]) for r in rows if "lr" in r)  # the schedule went on


def test_bad_model_folders_are_one_line_errors(ema_run, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["export", str(ema_run), "--out", str(out)]) == 0

    def error(*argv) -> str:
        assert main(list(map(str, argv))) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err
        return err

    assert "is not a run directory or an exported model" in error("forecast", tmp_path, "--quiet")
    assert "is an exported model, not a run to resume" in error("train", out)
    assert "lies inside the model folder" in error("export", ema_run, "--out", out / "sub")
    assert "lies inside the model folder" in error("export", ema_run, "--out", ema_run / "exp")
    other = _train(tmp_path / "runs", "other", "train.max_steps=5", "model.hidden_channels=8")
    assert "holds another model" in error("export", other, "--out", out)
    weights = out / "model" / "diffusion_pytorch_model.safetensors"
    original = weights.read_bytes()
    (out / "evil.pkl").write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")
    assert "evil.pkl, which an export never contains" in error("forecast", out, "--quiet")
    (out / "evil.pkl").unlink()
    weights.write_bytes(original[:-8] + bytes(8))
    assert "sha256 differs" in error("forecast", out, "--quiet")
    weights.write_bytes(original)
    (out / EXPORT).write_text("[]")
    assert "not a valid export manifest" in error("forecast", out, "--quiet")
    with pytest.raises(UserError, match="export of another model|holds another model"):
        from gencond.export import export_run

        export_run(other, out.parent / "fresh")
        export_run(ema_run, out.parent / "fresh")
    assert main(["export", str(other), "--out", str(out.parent / "fresh"), "--overwrite"]) == 0


def test_runs_dir_defaults_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GENCOND_RUNS_DIR", str(tmp_path / "outside"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", CONFIG, "--quiet", "train.max_steps=2", *TINY]) == 0
    assert (tmp_path / "outside" / "tiny" / "config.yaml").is_file() and not (tmp_path / "runs").exists()
