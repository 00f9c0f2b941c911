import pytest
import torch

from gencond.errors import UserError
from vision.models import DiTDenoiser, UViTDenoiser, load_denoiser, make_denoiser

SMALL = dict(image_size=8, in_channels=1, patch_size=2, width=32, heads=2)
DEPTH = {"uvit": 5, "dit": 4}


def build(arch, **kw):
    torch.manual_seed(0)
    return make_denoiser(arch, depth=DEPTH[arch], **SMALL, **kw)


@pytest.mark.parametrize("arch", ["uvit", "dit"])
@pytest.mark.parametrize("feature_conditioning", [False, True])
def test_shapes_and_gradients(arch, feature_conditioning):
    model = build(arch, num_classes=10, feature_conditioning=feature_conditioning)
    if arch == "dit":  # adaLN-Zero starts at zero output; give every layer a gradient path
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    out = model(x, torch.tensor([1, 500, 999]), cond=torch.tensor([0, 3, 10]))
    assert out.shape == (3, 1, 8, 8)
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    if feature_conditioning:
        assert model.self_cond.time_scale.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["uvit", "dit"])
def test_feature_conditioning_starts_as_the_baseline_and_then_changes_the_decoder(arch):
    base, sc = build(arch), build(arch, feature_conditioning=True)
    assert set(base.state_dict()) < set(sc.state_dict())
    assert all(torch.equal(v, sc.state_dict()[k]) for k, v in base.state_dict().items())  # same seed, same backbone
    if arch == "dit":  # make the zero-initialised output layers non-zero in both, identically
        torch.manual_seed(1)
        for m in (base, sc):
            torch.manual_seed(1)
            for blk in m.blocks:
                torch.nn.init.normal_(blk.modulation[-1].weight, std=0.05)
            torch.nn.init.normal_(m.out_proj.weight, std=0.05)
            torch.nn.init.normal_(m.final_modulation[-1].weight, std=0.05)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([3, 30, 300, 900])
    with torch.no_grad():
        ref = base(x, t)
        assert ref.abs().sum() > 0
        assert torch.equal(sc(x, t), ref)  # zero-initialised scale: exactly the baseline
        torch.nn.init.normal_(sc.self_cond.time_scale.weight, std=0.5)
        changed = sc(x, t)
        feats_base = base.block_features(x, t, blocks=range(base.num_blocks))
        feats_sc = sc.block_features(x, t, blocks=range(sc.num_blocks))
    assert (changed - ref).abs().max() > 1e-4
    for b in range(sc.num_blocks):  # encoder side untouched, decoder side changed
        same = torch.allclose(feats_base[b], feats_sc[b])
        assert same == (b < sc.num_encoder_blocks), b


@pytest.mark.parametrize("arch, cls", [("uvit", UViTDenoiser), ("dit", DiTDenoiser)])
def test_save_and_load_round_trip(tmp_path, arch, cls):
    model = build(arch, feature_conditioning=True, augment_dim=6, contrastive="student")
    assert model.teacher is not None and model.teacher.predictor is None and model.predictor is not None
    torch.nn.init.normal_(model.self_cond.time_scale.weight, std=0.5)
    torch.nn.init.normal_(model.out_proj.weight, std=0.5)
    model.save_pretrained(tmp_path / "m")
    loaded = load_denoiser(tmp_path / "m")
    assert type(loaded) is cls
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 50])
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.allclose(model(x, t), loaded(x, t))


def test_a_model_saved_before_feature_conditioning_was_renamed_loads_the_same(tmp_path):
    """Weights saved when the switch was called ``self_conditioning`` load with their feature conditioning."""
    import json

    model = build("uvit", feature_conditioning=True).eval()
    torch.nn.init.normal_(model.self_cond.time_scale.weight, std=0.5)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["self_conditioning"] = config.pop("feature_conditioning")
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_denoiser(tmp_path).eval()
    assert loaded.config.feature_conditioning
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 50])
    with torch.no_grad():
        assert torch.equal(model(x, t), loaded(x, t))


@pytest.mark.parametrize("section", ["model", "ddae"])
def test_the_config_sections_are_the_constructors_arguments(section):
    """Each default is declared once, in the config; the constructors read it (DiT keeps its own depth)."""
    import dataclasses
    import inspect

    from vision.config import DDAEConfig, ImageModelConfig

    schema = {"model": ImageModelConfig, "ddae": DDAEConfig}[section]
    arguments = {f.name for f in dataclasses.fields(schema)} - set(ImageModelConfig.TASK_KEYS) if section == "model" \
        else {"feature_conditioning", "source_block", "projection_dim"}  # ddae.contrastive picks a role
    for cls in (UViTDenoiser, DiTDenoiser):
        parameters = inspect.signature(cls.__init__).parameters
        for name in arguments - ({"depth"} if cls is DiTDenoiser else set()):
            assert parameters[name].default == getattr(schema(), name), (cls, name)


def test_cfg_null_condition_is_the_extra_class():
    model = build("dit", num_classes=10)
    assert model.null_condition(torch.tensor([1, 2])).tolist() == [10, 10]


def test_bad_architecture_settings_are_one_line_errors():
    with pytest.raises(UserError, match="unknown architecture 'vit'; model.arch must be one of"):
        make_denoiser("vit", **SMALL)
    with pytest.raises(UserError, match="not a multiple of model.patch_size 3"):
        make_denoiser("dit", **{**SMALL, "patch_size": 3})
    with pytest.raises(UserError, match="odd model.depth"):
        make_denoiser("uvit", depth=4, **SMALL)
    with pytest.raises(UserError, match="not an encoder-side block"):
        make_denoiser("dit", depth=4, source_block=3, **SMALL)
    with pytest.raises(ValueError, match=r"expected images \(B, 1, 8, 8\), got \(2, 3, 8, 8\)"):
        build("uvit")(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]))
