import pytest

from gencond.cli import main
from gencond.config import ConfigError, load_config


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_config_with_overrides_and_extends(tmp_path):
    write(tmp_path, "base.yaml", "task: tsdiff\ndata:\n  dataset: synthetic\ntrain:\n  lr: 0.01\n")
    child = write(tmp_path, "child.yaml", "extends: base.yaml\ntrain:\n  batch_size: 8\n")
    cfg = load_config(child, ["train.max_steps=7", "model.init_skip=true"])
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.max_steps, cfg.model.init_skip) == (0.01, 8, 7, True)
    assert cfg.name == "child" and cfg.diffusion.num_train_timesteps == 100  # TSDiff's own defaults


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, "typo.yaml", "task: tsdiff\ndata:\n  dataset: synthetic\ntrain:\n  learning_rat: 0.1\n  lr_schedul: cosine\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "typo.yaml" in msg and "train.l" in msg and "\n" not in msg


def test_suggestion_for_near_miss(tmp_path):
    path = write(tmp_path, "typo.yaml", "task: tsdiff\ndata:\n  dataset: synthetic\ntrain:\n  max_step: 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.max_step' \(did you mean 'train.max_steps'\?\)"):
        load_config(path)


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, "bad.yaml", "task: tsdiff\ndata:\n  dataset: synthetic\ntrain:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: bad value for 'train.batch_size'"):
        load_config(path)


def test_bad_override(tmp_path):
    path = write(tmp_path, "ok.yaml", "task: tsdiff\ndata:\n  dataset: synthetic\n")
    with pytest.raises(ConfigError, match="command-line override: unknown key 'train.nope'"):
        load_config(path, ["train.nope=1"])
    with pytest.raises(ConfigError, match="not of the form key.sub=value"):
        load_config(path, ["train.lr"])


def test_missing_and_unknown_task(tmp_path):
    with pytest.raises(ConfigError, match="missing key 'task'"):
        load_config(write(tmp_path, "a.yaml", "train:\n  lr: 0.1\n"))
    with pytest.raises(ConfigError, match="unknown task 'tsdif'; known tasks: .*tsdiff"):
        load_config(write(tmp_path, "b.yaml", "task: tsdif\n"))
    with pytest.raises(ConfigError, match="required key 'data.dataset'"):
        load_config(write(tmp_path, "c.yaml", "task: tsdiff\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_prints_one_line_error(tmp_path, capsys):
    path = write(tmp_path, "typo.yaml", "task: tsdiff\ndata:\n  datset: synthetic\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'data.datset'" in err and "did you mean 'data.dataset'" in err


def test_renamed_keys_load_under_their_new_names_with_one_warning_each(tmp_path):
    """A schema's RENAMED_KEYS (old dotted key -> new): old files and overrides still load, warned once a key."""
    from dataclasses import dataclass, field
    from typing import ClassVar

    from omegaconf import OmegaConf

    from gencond.config import RunConfig, build_config

    @dataclass
    class Section:
        size: int = 1
        mode: str = "a"

    @dataclass
    class Schema(RunConfig):
        task: str = "toy"
        kept: Section = field(default_factory=Section)
        RENAMED_KEYS: ClassVar[dict] = {"old": "kept", "kept.width": "kept.size"}

    raw = OmegaConf.create({"task": "toy", "old": {"mode": "b"}})
    with pytest.warns(FutureWarning) as warned:
        cfg = build_config(Schema, raw, "run/config.yaml", ["old.width=3"])
    assert (cfg.kept.size, cfg.kept.mode) == (3, "b") and "old" not in cfg
    messages = [str(w.message) for w in warned]
    assert any("run/config.yaml: config key 'old' is now 'kept'" in m for m in messages)
    assert any("override 'old.width=3'" in m and "'kept.width' is now 'kept.size'" in m for m in messages)
    with pytest.raises(ConfigError, match="'old' is the old name of 'kept'; give 'kept' only"):
        build_config(Schema, OmegaConf.create({"old": {"mode": "b"}, "kept": {"size": 2}}), "both.yaml")
