from pathlib import Path

import pytest

from gencond.config import ConfigError, load_config

ALL = sorted((Path(__file__).resolve().parents[2] / "configs" / "vision").glob("*.yaml"))
CONTROL = "hoi_shapes_control"  # the positive control: other data (tested on its own)
HOI = [p for p in ALL if p.stem.startswith("hoi_shapes") and p.stem != CONTROL]
CONFIGS = [p for p in ALL if not p.stem.startswith("hoi_shapes")]  # DDAE / DDAE++


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_vision_config_validates(path):
    cfg = load_config(path, ["data.dataset=/data/imagenet/train"] if "imagenet" in path.stem else [])
    assert cfg.task == "ddae" and cfg.model.arch in ("uvit", "dit")
    assert cfg.data.image_size % cfg.model.patch_size == 0
    assert cfg.ddae.feature_conditioning == ("selfcond" in path.stem or "ddaepp" in path.stem or "cfg" in path.stem)


def test_selfcond_configs_differ_from_their_baseline_only_by_the_switch():
    base = load_config(CONFIGS[0].parent / "mnist_uvit.yaml")
    sc = load_config(CONFIGS[0].parent / "mnist_uvit_selfcond.yaml")
    sc.ddae.feature_conditioning = False
    sc.name = base.name
    assert sc == base


def test_the_contrastive_config_is_ddaepp_without_feature_conditioning():
    """The ablation's contrastive-only variant: mnist_uvit_ddaepp.yaml less its feature conditioning."""
    both = load_config(CONFIGS[0].parent / "mnist_uvit_ddaepp.yaml")
    contrastive = load_config(CONFIGS[0].parent / "mnist_uvit_contrastive.yaml")
    assert contrastive.ddae.contrastive and not contrastive.ddae.feature_conditioning
    contrastive.ddae.feature_conditioning, contrastive.name = True, both.name
    assert contrastive == both


def test_misspelt_switch_is_named():
    with pytest.raises(ConfigError, match="unknown key 'ddae.feature_condition' \\(did you mean 'ddae.feature_conditioning'\\?\\)"):
        load_config(CONFIGS[0].parent / "mnist_uvit.yaml", ["ddae.feature_condition=true"])


def test_the_old_name_of_feature_conditioning_still_loads_with_a_deprecation_message(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("extends: " + str(CONFIGS[0].parent / "mnist_uvit.yaml") + "\nddae:\n  self_conditioning: true\n")
    with pytest.warns(FutureWarning, match="'ddae.self_conditioning' is now 'ddae.feature_conditioning'"):
        cfg = load_config(old)
    assert cfg.ddae.feature_conditioning and "self_conditioning" not in cfg.ddae
    with pytest.warns(FutureWarning, match="'ddae.self_conditioning' is now 'ddae.feature_conditioning'"):
        cfg = load_config(CONFIGS[0].parent / "mnist_uvit.yaml", ["ddae.self_conditioning=true"])
    assert cfg.ddae.feature_conditioning


@pytest.mark.parametrize("path", HOI, ids=lambda p: p.stem)
def test_hoi_shapes_configs_validate_and_differ_only_in_grounding(path):
    cfg = load_config(path)
    assert cfg.task == "interact"
    grounding = {"hoi_shapes_base": "none", "hoi_shapes_gligen": "gligen"}.get(path.stem, "interact")
    assert cfg.model.grounding == grounding
    assert cfg.model.interaction_embedding == (path.stem != "hoi_shapes_interact_no_embedding")
    if grounding != "none":  # the same data and training as InteractDiffusion, on the same base
        interact = load_config(path.parent / "hoi_shapes_interact.yaml")
        cfg.model.grounding, cfg.model.interaction_embedding, cfg.name = "interact", True, interact.name
        assert cfg == interact


def test_the_hoi_shapes_control_changes_only_its_data_and_caption_drop():
    control = load_config(ALL[0].parent / f"{CONTROL}.yaml")
    assert (control.data.split, control.model.caption_drop, control.model.max_interactions) == ("single", 1.0, 1)
    assert [(g.pattern, g.lr) for g in control.train.param_groups] == [("*.alpha_*", 1e-2)]
    interact = load_config(ALL[0].parent / "hoi_shapes_interact.yaml")
    control.data.split, control.model.caption_drop, control.model.max_interactions = "train", 0.5, 2
    control.train.max_steps, control.train.validate_every, control.name = 10000, 250, interact.name
    assert control == interact
