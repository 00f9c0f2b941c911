"""VideoUNet (AVDC's factorized space-time UNet): shapes, the identity-initialised temporal convs, the
conditions (first frame, text, previous plan, null condition), saving and loading, sizes, and training."""
import pytest
import torch
import torch.nn.functional as F

from gencond.conditions import GuidableDenoiser
from gencond.config import DiffusionConfig
from gencond.diffusion import DiffusionProcess, drop_condition
from video.model import INPUT_ORDER, TemporalConv, VideoUNet

torch.set_num_threads(1)

TEXT_DIM, TOKENS = 24, 6
TINY = dict(image_size=16, frames=3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(8,), head_channels=16, text_dim=TEXT_DIM, text_latents=4, text_max_tokens=TOKENS)
AVDC_SCALE = dict(base_channels=128, channel_mult=(1, 2, 3, 4, 5), num_res_blocks=2, attention_resolutions=(16, 8),
                  text_latents=64, image_size=128)


def tiny(seed: int = 0, **kw) -> VideoUNet:
    torch.manual_seed(seed)
    return VideoUNet(**{**TINY, **kw}).eval()


def inputs(model: VideoUNet, batch: int = 2, seed: int = 1, plan: bool = False):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    c, t, s = cfg.channels, cfg.frames, cfg.image_size
    x = torch.randn(batch, c, t, s, s, generator=g)
    mask = torch.ones(batch, TOKENS, dtype=torch.bool)
    mask[0, 4:] = False  # a padded text
    cond = {"first_frame": torch.rand(batch, c, s, s, generator=g) * 2 - 1,
            "text": torch.randn(batch, TOKENS, cfg.text_dim, generator=g), "text_mask": mask}
    if plan:
        cond["previous_plan"] = torch.rand(batch, c, t, s, s, generator=g) * 2 - 1
    return x, torch.tensor([3, 70])[:batch], cond


@pytest.mark.parametrize("channels,previous_plan,with_plan_key", [
    (3, False, False), (4, False, False), (3, True, True), (3, True, False), (4, True, True)])
def test_output_shape_equals_input_shape(channels, previous_plan, with_plan_key):
    model = tiny(channels=channels, previous_plan=previous_plan)
    assert model.conv_in.spatial.in_channels == channels * (3 if previous_plan else 2)
    x, t, cond = inputs(model, plan=with_plan_key)
    with torch.no_grad():
        out = model(x, t, cond=cond)
    assert out.shape == x.shape and out.is_contiguous() and torch.isfinite(out).all()


def test_previous_plan_is_used_and_missing_means_zeros():
    model = tiny(previous_plan=True)
    x, t, cond = inputs(model, plan=True)
    first_only = {k: v for k, v in cond.items() if k != "previous_plan"}
    with torch.no_grad():
        with_plan = model(x, t, cond=cond)
        without = model(x, t, cond=first_only)
        zeros = model(x, t, cond={**first_only, "previous_plan": torch.zeros_like(x)})
    assert torch.equal(without, zeros)
    assert (with_plan - without).abs().max() > 1e-4


def test_input_channel_order_is_noisy_frames_first_frame_previous_plan():
    model = tiny(previous_plan=True)
    x, _, cond = inputs(model, plan=True)
    net_in = model._input(x, cond)  # (B*T, 3C, H, W)
    b, c, t = x.shape[0], model.config.channels, model.config.frames
    blocks = net_in.reshape(b, t, len(INPUT_ORDER), c, *net_in.shape[-2:])
    assert INPUT_ORDER == ("x_t", "first_frame", "previous_plan")
    assert torch.equal(blocks[:, :, 0], x.transpose(1, 2))
    assert torch.equal(blocks[:, :, 1], cond["first_frame"][:, None].expand(b, t, -1, -1, -1))
    assert torch.equal(blocks[:, :, 2], cond["previous_plan"].transpose(1, 2))


def test_temporal_conv_matches_a_conv1d_over_frames():
    torch.manual_seed(0)
    conv = TemporalConv(5)
    assert torch.equal(conv.weight[:, :, 1], torch.eye(5)) and conv.weight[:, :, [0, 2]].abs().sum() == 0
    torch.nn.init.normal_(conv.weight)
    torch.nn.init.normal_(conv.bias)
    b, t, h, w = 3, 4, 6, 2
    x = torch.randn(b * t, 5, h, w)
    ref = F.conv1d(x.view(b, t, 5, h * w).permute(0, 3, 2, 1).reshape(b * h * w, 5, t), conv.weight, conv.bias,
                   padding=1)
    ref = ref.view(b, h * w, 5, t).permute(0, 3, 2, 1).reshape(b * t, 5, h, w)
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.testing.assert_close(conv(x.contiguous(memory_format=layout), t), ref, rtol=1e-5, atol=1e-5)


def test_untrained_model_treats_frames_independently():
    model = tiny()
    assert model.conv_out.spatial.weight.abs().sum() > 0  # no zero-initialised output: the check is not trivial
    x, t, cond = inputs(model)
    k = 1
    x2 = x.clone()
    x2[:, :, k] += torch.randn_like(x2[:, :, k])
    with torch.no_grad():
        diff = (model(x2, t, cond=cond) - model(x, t, cond=cond)).abs().amax(dim=(0, 1, 3, 4))  # per frame
        assert diff[k] > 1e-3
        assert torch.all(diff[torch.arange(len(diff)) != k] < 1e-6), diff
        # the temporal convs are the only path between frames: break one identity and the neighbours move
        torch.nn.init.normal_(model.conv_in.temporal.weight, std=0.1)
        diff = (model(x2, t, cond=cond) - model(x, t, cond=cond)).abs().amax(dim=(0, 1, 3, 4))
    assert torch.all(diff > 1e-4), diff


def test_first_frame_reaches_the_output():
    model = tiny()
    x, t, cond = inputs(model)
    first = cond["first_frame"].clone().requires_grad_(True)
    out = model(x, t, cond={**cond, "first_frame": first})
    (grad,) = torch.autograd.grad(out.square().sum(), first)
    assert grad.abs().amax(dim=(1, 2, 3)).min() > 0  # every sample's first frame matters
    with torch.no_grad():
        changed = model(x, t, cond={**cond, "first_frame": -cond["first_frame"]})
    assert (changed - out.detach()).abs().max() > 1e-3


@pytest.mark.parametrize("scale_shift_norm", [True, False])
def test_every_parameter_gets_a_gradient(scale_shift_norm):
    model = tiny(previous_plan=True, scale_shift_norm=scale_shift_norm)
    x, t, cond = inputs(model, plan=True)
    model(x, t, cond=cond).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("scale_shift_norm", [True, False])
def test_text_changes_the_output_and_padding_does_not(scale_shift_norm):
    model = tiny(scale_shift_norm=scale_shift_norm)
    x, t, cond = inputs(model)
    with torch.no_grad():
        ref = model(x, t, cond=cond)
        other = model(x, t, cond={**cond, "text": torch.randn_like(cond["text"])})
        padded = cond["text"].clone()
        padded[0, 4:] = 100.0  # masked-out tokens of sample 0
        same = model(x, t, cond={**cond, "text": padded})
        no_text = model(x, t, cond={"first_frame": cond["first_frame"]})
    assert (other - ref).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-4
    torch.testing.assert_close(same, ref)
    assert torch.isfinite(no_text).all()


def test_the_pooled_skip_keeps_two_instructions_apart_at_initialisation():
    """Two texts that differ in one token of four (as "door open" / "door close" do): the learned latents,
    the same for every text, swamp the difference unless the tokens' mean skips the attention."""
    from video.model import TextResampler

    g = torch.Generator().manual_seed(0)
    a = torch.randn(1, TOKENS, TEXT_DIM, generator=g) * 10
    b = a.clone()
    b[0, 2] = torch.randn(TEXT_DIM, generator=g) * 10
    mask = torch.zeros(1, TOKENS, dtype=torch.bool)
    mask[0, :4] = True
    gaps = {}
    for skip in (False, True):
        torch.manual_seed(0)
        resampler = TextResampler(TEXT_DIM, 64, 64, num_latents=8, max_tokens=TOKENS, pooled_skip=skip)
        with torch.no_grad():
            va, vb = resampler(a, mask), resampler(b, mask)
            empty = resampler(a, torch.zeros_like(mask))
        gaps[skip] = float((va - vb).norm() / va.norm())
        assert torch.isfinite(empty).all()
    assert gaps[True] > 0.1 and gaps[True] > 3 * gaps[False], gaps


def test_null_condition_drops_only_the_text():
    model = tiny(previous_plan=True)
    assert isinstance(model, GuidableDenoiser)
    x, t, cond = inputs(model, plan=True)
    null = model.null_condition(cond)
    assert set(null) == set(cond)
    assert null["first_frame"] is cond["first_frame"] and null["previous_plan"] is cond["previous_plan"]
    assert null["text"].shape == cond["text"].shape and not null["text"].any()
    assert null["text_mask"].dtype == torch.bool and not null["text_mask"].any()
    assert cond["text_mask"].any()  # the input is left alone
    with torch.no_grad():
        out = model(x, t, cond=null)
        out_other_text = model(x, t, cond=model.null_condition({**cond, "text": torch.randn_like(cond["text"])}))
        out_text = model(x, t, cond=cond)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, out_other_text)  # the null text carries no text
    assert (out - out_text).abs().max() > 1e-4
    # the core's condition dropout replaces the text of the dropped samples only
    dropped = drop_condition(model, cond, torch.tensor([True, False]))
    assert not dropped["text_mask"][0].any() and torch.equal(dropped["text_mask"][1], cond["text_mask"][1])
    assert torch.equal(dropped["first_frame"], cond["first_frame"])


def test_bad_inputs_are_one_line_errors():
    model = tiny()
    x, t, cond = inputs(model)
    with pytest.raises(ValueError, match="self-conditioning"):
        model(x, t, cond=cond, self_cond=x)
    with pytest.raises(ValueError, match="previous_plan=False"):
        model(x, t, cond={**cond, "previous_plan": x})
    with pytest.raises(ValueError, match="first_frame"):
        model(x, t, cond={"text": cond["text"]})
    with pytest.raises(ValueError, match="text_max_tokens"):
        model(x, t, cond={**cond, "text": torch.zeros(2, TOKENS + 1, TEXT_DIM),
                          "text_mask": torch.ones(2, TOKENS + 1, dtype=torch.bool)})
    with pytest.raises(ValueError, match="expected x_t"):
        model(x[:, :, :2], t, cond=cond)


def test_save_and_load_give_identical_outputs(tmp_path):
    model = tiny(channels=4, previous_plan=True, instructions=("open the door", "close the door"))
    for p in model.parameters():  # move away from the initialisation, so loading is really tested
        p.data.add_(0.01 * torch.randn_like(p))
    x, t, cond = inputs(model, plan=True)
    model.save_pretrained(tmp_path / "m")
    loaded = VideoUNet.from_pretrained(tmp_path / "m").eval()
    def public(cfg):  # a saved tuple comes back as a list; "_"-keys are diffusers' bookkeeping
        return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if not k.startswith("_")}

    assert public(loaded.config) == public(model.config)
    assert list(loaded.config.instructions) == ["open the door", "close the door"]
    with torch.no_grad():
        assert torch.equal(loaded(x, t, cond=cond), model(x, t, cond=cond))


def test_sizes():
    small = VideoUNet()
    assert 0.5e6 <= small.num_parameters() <= 3e6, small.num_parameters()
    assert small.attention_sizes == [8, 8, 8]  # one encoder block, two decoder blocks at 8x8
    with torch.device("meta"):  # no memory, no initialisation cost
        avdc = VideoUNet(**AVDC_SCALE)
    n = avdc.num_parameters()
    assert 150e6 <= n <= 260e6, n  # AVDC: ~201 M
    assert sorted(set(avdc.attention_sizes)) == [8, 16]


def test_a_short_training_run_lowers_the_loss():
    torch.manual_seed(0)
    model = tiny(frames=3).train()
    cfg = model.config
    s, t = cfg.image_size, cfg.frames
    # two fixed clips: a bright square moving right / down across a dark frame, in [-1, 1]
    clips = -torch.ones(2, cfg.channels, t + 1, s, s)
    for f in range(t + 1):
        clips[0, :, f, 4:8, 2 + 3 * f:6 + 3 * f] = 1.0
        clips[1, :, f, 2 + 3 * f:6 + 3 * f, 8:12] = 0.5
    x0, first = clips[:, :, 1:], clips[:, :, 0]
    g = torch.Generator().manual_seed(0)
    cond = {"first_frame": first, "text": torch.randn(2, TOKENS, TEXT_DIM, generator=g),
            "text_mask": torch.ones(2, TOKENS, dtype=torch.bool)}
    process = DiffusionProcess(DiffusionConfig(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                                               prediction_type="v_prediction", min_snr_gamma=5))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for step in range(30):
        # the same 5 noise/timestep draws in the first and the last 5 steps: a like-for-like comparison
        loss, _ = process.training_loss(model, x0, cond=cond, generator=torch.Generator().manual_seed(step % 5))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first5, last5 = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last5 < 0.8 * first5, losses  # measured: 0.35 -> 0.20


def test_the_model_sections_are_the_constructors_arguments():
    """Each default is declared once, in the config's model section: a constructor argument that is neither
    in it nor derived from the data would be a setting no config can reach."""
    import dataclasses
    import inspect

    from video.config import CriticModelConfig, VideoModelConfig
    from video.critic import PlanCritic

    derived = {"channels", "frames", "image_size", "text_dim", "instructions"}
    for section, model in ((VideoModelConfig, VideoUNet), (CriticModelConfig, PlanCritic)):
        defaults = {n: p.default for n, p in inspect.signature(model.__init__).parameters.items() if n != "self"}
        declared = {f.name: getattr(section(), f.name) for f in dataclasses.fields(section)}
        assert set(defaults) - derived == set(declared), model
        assert {n: list(v) if isinstance(v, tuple) else v for n, v in defaults.items() if n in declared} == declared


def test_the_shipped_planners_config_loads_as_before_and_rebuilds_its_network(tmp_path):
    """pretrained/video-planner-32px's config loads without a warning, and as it was written (with the old
    section name ``consistency``) with a deprecation warning, to the same settings; its model section rebuilds
    the exported network's config exactly."""
    import json
    import warnings
    from pathlib import Path

    from omegaconf import OmegaConf

    from gencond.config import load_config
    from video.task import build_model

    folder = Path(__file__).resolve().parents[2] / "pretrained" / "video-planner-32px"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        cfg = load_config(folder / "config.yaml")
    text = (folder / "config.yaml").read_text()
    assert text.count("\nplan_refinement:\n") == 1
    (tmp_path / "config.yaml").write_text(text.replace("\nplan_refinement:\n", "\nconsistency:\n"))
    with pytest.warns(FutureWarning, match="config key 'consistency' is now 'plan_refinement'"):
        old_cfg = load_config(tmp_path / "config.yaml")
    assert OmegaConf.to_container(old_cfg) == OmegaConf.to_container(cfg)
    written = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml").plan_refinement)
    assert {k: v for k, v in OmegaConf.to_container(cfg.plan_refinement).items() if k in written} == written
    exported = json.loads((folder / "model" / "config.json").read_text())
    rebuilt = dict(build_model(cfg, exported["instructions"]).config)
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in rebuilt.items() if not k.startswith("_")} == \
        {k: v for k, v in exported.items() if not k.startswith("_")}
