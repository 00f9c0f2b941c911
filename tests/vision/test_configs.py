from pathlib import Path

import pytest

from gencond.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "vision").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_vision_config_validates(path):
    cfg = load_config(path, ["data.dataset=/data/imagenet/train"] if "imagenet" in path.stem else [])
    assert cfg.task == "ddae" and cfg.model.arch in ("uvit", "dit")
    assert cfg.data.image_size % cfg.model.patch_size == 0
    assert cfg.ddae.self_conditioning == ("selfcond" in path.stem or "ddaepp" in path.stem or "cfg" in path.stem)


def test_selfcond_configs_differ_from_their_baseline_only_by_the_switch():
    base = load_config(CONFIGS[0].parent / "mnist_uvit.yaml")
    sc = load_config(CONFIGS[0].parent / "mnist_uvit_selfcond.yaml")
    sc.ddae.self_conditioning = False
    sc.name = base.name
    assert sc == base


def test_misspelt_switch_is_named():
    with pytest.raises(ConfigError, match="unknown key 'ddae.self_condition' \\(did you mean 'ddae.self_conditioning'\\?\\)"):
        load_config(CONFIGS[0].parent / "mnist_uvit.yaml", ["ddae.self_condition=true"])
