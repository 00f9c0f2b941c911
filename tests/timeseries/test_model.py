"""TSDiff denoiser and its S4D layer: shapes, gradients, bidirectionality, kernel vs recurrence, I/O, errors."""

import pytest
import torch

from timeseries.model import TSDiffDenoiser, tanh_sigmoid_gate
from timeseries.s4 import S4DLayer, fft_convolution, fft_length


def small_model(**kwargs) -> TSDiffDenoiser:
    torch.manual_seed(0)
    config = dict(in_channels=3, hidden_channels=8, num_blocks=2, state_size=8, step_embedding_dim=16)
    config.update(kwargs)
    return TSDiffDenoiser(**config)


def ssm_scan(layer: S4DLayer, u: torch.Tensor, direction: int) -> torch.Tensor:
    """Step-by-step recurrence of the discretised diagonal SSM: x_k = A_bar x_{k-1} + B_bar u_k, y_k = 2 Re(C x_k)."""
    dta_real, dta_imag, cb_real, cb_imag = layer.discretize()
    a_bar = torch.exp(torch.complex(dta_real, dta_imag))  # (H, N/2)
    cb = torch.complex(cb_real, cb_imag)[direction]  # C * B_bar, (H, N/2)
    state = torch.zeros(u.shape[0], *a_bar.shape, dtype=a_bar.dtype)
    ys = []
    for k in range(u.shape[1]):
        state = a_bar * state + u[:, k, :, None]
        ys.append(2 * (cb * state).sum(-1).real)
    return torch.stack(ys, dim=1)


def test_fft_length_is_smooth_and_large_enough():
    for n in [1, 2, 7, 13, 720, 780, 781, 1000]:
        m = fft_length(n)
        assert m >= n
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        assert rest == 1
    assert fft_length(780) == 800 and fft_length(720) == 720


@pytest.mark.parametrize("input_self_condition", [False, True])
@pytest.mark.parametrize("length", [1, 2, 17, 64, 101])
def test_output_shape(length, input_self_condition):
    model = small_model(input_self_condition=input_self_condition)
    x = torch.randn(4, length, 3)
    t = torch.randint(0, 100, (4,))
    out = model(x, t, self_cond=torch.randn_like(x) if input_self_condition else None)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    if input_self_condition:
        assert model(x, t).shape == x.shape  # self_cond=None means zeros


def test_paper_config_parameter_count_and_float_steps():
    model = TSDiffDenoiser(in_channels=11)
    n_params = sum(p.numel() for p in model.parameters())
    assert 170_000 < n_params < 200_000  # the paper's "small" config is about 0.19 M
    x = torch.randn(2, 390, 11)
    with torch.no_grad():
        out_int = model(x, torch.tensor([3, 50]))
        out_float = model(x, torch.tensor([3.0, 50.0]))
        out_scalar = model(x, 7)
    torch.testing.assert_close(out_int, out_float)
    assert out_scalar.shape == x.shape


def test_gradients_reach_all_parameters():
    model = small_model(input_self_condition=True, init_skip=True)
    x = torch.randn(3, 20, 3, requires_grad=True)
    out = model(x, torch.randint(0, 100, (3,)), self_cond=torch.randn(3, 20, 3))
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_init_skip_with_zero_output_layer_returns_input():
    for init_skip in [True, False]:
        model = small_model(init_skip=init_skip)
        torch.nn.init.zeros_(model.output_mlp[-1].weight)
        torch.nn.init.zeros_(model.output_mlp[-1].bias)
        x = torch.randn(2, 15, 3)
        out = model(x, torch.tensor([1, 99]))
        torch.testing.assert_close(out, x if init_skip else torch.zeros_like(x))


def test_step_changes_output():
    model = small_model()
    x = torch.randn(1, 30, 3).expand(2, 30, 3)
    out = model(x, torch.tensor([0, 90]))
    assert not torch.allclose(out[0], out[1])


def future_sensitivity(model: TSDiffDenoiser, i: int, length: int = 32) -> torch.Tensor:
    x = torch.randn(2, length, 3)
    t = torch.tensor([5, 60])
    x_perturbed = x.clone()
    x_perturbed[:, i + 1 :] += torch.randn_like(x_perturbed[:, i + 1 :])
    with torch.no_grad():
        return (model(x_perturbed, t)[:, : i + 1] - model(x, t)[:, : i + 1]).abs().amax()


def test_bidirectional_output_depends_on_the_future_causal_ablation_does_not():
    assert future_sensitivity(small_model(), i=10) > 1e-3
    assert future_sensitivity(small_model(), i=0) > 1e-3
    assert future_sensitivity(small_model(bidirectional=False), i=10) < 1e-5


def test_causal_output_depends_on_the_past():
    model = small_model(bidirectional=False)
    x = torch.randn(2, 32, 3)
    x_perturbed = x.clone()
    x_perturbed[:, 3] += 1.0
    t = torch.tensor([5, 60])
    with torch.no_grad():
        change = (model(x_perturbed, t) - model(x, t)).abs().amax(dim=(0, 2))
    assert change[:3].max() < 1e-5 and change[20] > 1e-4


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_s4d_kernel_matches_recurrence(init):
    torch.manual_seed(1)
    layer = S4DLayer(channels=4, state_size=6, init=init, dt_min=0.05, dt_max=0.5).double()
    length = 23
    u = torch.randn(2, length, 4, dtype=torch.float64)
    with torch.no_grad():
        y = layer.convolve(u)
        forward = ssm_scan(layer, u, direction=0)
        backward_reversed = ssm_scan(layer, u.flip(1), direction=1)  # the anti-causal SSM on reversed time
        # anti-causal part at i sums u[j] for j > i: the reversed scan read one step later.
        backward = torch.cat([backward_reversed.flip(1)[:, 1:], torch.zeros_like(u[:, :1])], dim=1)
        expected = forward + backward + layer.d * u
        torch.testing.assert_close(y, expected, rtol=1e-9, atol=1e-9)

        kernel = layer.kernel(length)
        impulse = torch.zeros(1, length, 4, dtype=torch.float64)
        impulse[:, 0] = 1.0
        torch.testing.assert_close(kernel[0].T, ssm_scan(layer, impulse, 0)[0])


def test_fft_convolution_gradients():
    torch.manual_seed(0)
    u = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 15, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fft_convolution, (u, k))


def test_fft_convolution_matches_direct_circular_convolution():
    torch.manual_seed(0)
    u = torch.randn(2, 9, 3, dtype=torch.float64)
    k = torch.randn(3, 20, dtype=torch.float64)
    expected = torch.zeros_like(u)
    for i in range(9):
        for j in range(9):
            expected[:, i] += u[:, j] * k[:, (i - j) % 20]
    torch.testing.assert_close(fft_convolution(u, k), expected)


def test_gate_matches_tanh_sigmoid():
    h = torch.randn(4, 5, 6, dtype=torch.float64, requires_grad=True) * 5
    torch.testing.assert_close(tanh_sigmoid_gate(h), torch.tanh(h) * torch.sigmoid(h))
    assert torch.autograd.gradcheck(tanh_sigmoid_gate, (h.detach().requires_grad_(),))
    extreme = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4])
    torch.testing.assert_close(tanh_sigmoid_gate(extreme), torch.tanh(extreme) * torch.sigmoid(extreme))


def test_input_only_gradient_matches_full_backward():
    """Guided sampling differentiates w.r.t. x_t with frozen weights; the fast path must agree."""
    model = small_model()
    x = torch.randn(2, 25, 3)
    t = torch.tensor([3, 70])
    x1 = x.clone().requires_grad_()
    (grad_full,) = torch.autograd.grad(model(x1, t).sum(), x1)
    model.requires_grad_(False)
    x2 = x.clone().requires_grad_()
    (grad_input_only,) = torch.autograd.grad(model(x2, t).sum(), x2)
    torch.testing.assert_close(grad_input_only, grad_full)


def test_the_cached_kernel_gives_what_recomputing_it_gives_and_follows_weight_changes():
    """Frozen weights (sampling): the kernel's spectrum is computed once and reused; outputs and input
    gradients equal those of recomputing the kernel, and changed weights are never served stale."""
    model = small_model()
    x, t = torch.randn(4, 25, 3), torch.tensor([3, 70, 5, 99])
    x1 = x.clone().requires_grad_()
    out_fresh = model(x1, t)  # trainable weights: the kernel is rebuilt (and differentiated)
    (grad_fresh,) = torch.autograd.grad(out_fresh.sum(), x1)
    model.requires_grad_(False)
    layer = next(m for m in model.modules() if isinstance(m, S4DLayer))
    for _ in range(2):
        x2 = x.clone().requires_grad_()
        out_cached = model(x2, t)
        (grad_cached,) = torch.autograd.grad(out_cached.sum(), x2)
        torch.testing.assert_close(out_cached, out_fresh.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_cached, grad_fresh, rtol=1e-5, atol=1e-6)
    spectrum = layer._spectrum_cache[1]
    with torch.no_grad():
        model(x, t)
    assert layer._spectrum_cache[1] is spectrum  # reused, not rebuilt
    with torch.no_grad():
        layer.log_dt.add_(0.3)  # an in-place update (optimizer step, EMA copy, load_state_dict)
        changed = model(x, t)
    assert layer._spectrum_cache[1] is not spectrum and not torch.allclose(changed, out_fresh)
    model.requires_grad_(True)
    torch.testing.assert_close(changed, model(x, t).detach(), rtol=1e-5, atol=1e-6)


def test_save_pretrained_round_trip(tmp_path):
    model = small_model(input_self_condition=True, init_skip=True).eval()
    x = torch.randn(2, 19, 3)
    t = torch.tensor([4, 80])
    model.save_pretrained(tmp_path)
    loaded = TSDiffDenoiser.from_pretrained(tmp_path).eval()
    assert loaded.config.input_self_condition and loaded.config.init_skip and loaded.config.in_channels == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, self_cond=x), model(x, t, self_cond=x), rtol=0, atol=0)


def test_a_model_saved_before_the_rename_of_self_condition_loads_the_same(tmp_path):
    """Models saved before input self-conditioning's argument was named ``input_self_condition`` load as saved."""
    import json

    model = small_model(input_self_condition=True).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["self_condition"] = config.pop("input_self_condition")
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = TSDiffDenoiser.from_pretrained(tmp_path).eval()
    x, t = torch.randn(2, 10, 3), torch.tensor([4, 80])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, self_cond=x), model(x, t, self_cond=x), rtol=0, atol=0)


def test_the_model_section_is_the_constructors_arguments():
    """Each default is declared once: in the config's model section, which the constructor reads."""
    import dataclasses
    import inspect

    from omegaconf import OmegaConf

    from timeseries.config import TSDiffConfig, TSDiffModelConfig
    from timeseries.task import build_model

    parameters = inspect.signature(TSDiffDenoiser.__init__).parameters
    for f in dataclasses.fields(TSDiffModelConfig):
        if f.name not in TSDiffModelConfig.TASK_KEYS:
            assert parameters[f.name].default == getattr(TSDiffModelConfig(), f.name), f.name
    cfg = OmegaConf.structured(TSDiffConfig(model=TSDiffModelConfig(hidden_channels=8, init_skip=True)))
    model = build_model(cfg, channels=3)
    assert model.config.hidden_channels == 8 and model.config.init_skip and model.config.num_blocks == 3
    assert not model.config.input_self_condition and model.config.cond_channels == 0


def test_clear_errors():
    model = small_model()
    x = torch.randn(2, 10, 3)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"in_channels=3.*\(2, 10, 4\)"):
        model(torch.randn(2, 10, 4), t)
    with pytest.raises(ValueError, match="input_self_condition=False"):
        model(x, t, self_cond=x)
    with pytest.raises(ValueError, match="cond must be None"):
        model(x, t, cond=torch.zeros(2))
    with pytest.raises(ValueError, match="t must be"):
        model(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="self_cond must have the shape"):
        small_model(input_self_condition=True)(x, t, self_cond=torch.randn(2, 10, 6))


def test_default_sampler_lists_20_of_the_100_timesteps_dense_near_zero():
    from gencond.config import ConfigError
    from gencond.diffusion import DiffusionProcess
    from gencond.sampling import sample
    from timeseries.config import _tsdiff_diffusion, _tsdiff_sampling

    sampling, diffusion = _tsdiff_sampling(), _tsdiff_diffusion()
    steps = sampling.timesteps
    assert steps == [99, 91, 84, 77, 69, 63, 56, 50, 44, 38, 32, 27, 22, 18, 13, 10, 6, 3, 1, 0]
    strides = [a - t for a, t in zip(steps, steps[1:])]
    assert max(strides) == strides[0] == 8 and strides[-1] == 1  # denser towards t = 0
    seen = []
    model = small_model(in_channels=1)
    sample(model, DiffusionProcess(diffusion), (1, 12, 1), sampling, progress=False,
           callback=lambda i, t, x, x0: seen.append(t))
    assert seen == steps
    longer = DiffusionProcess(type(diffusion)(**{**diffusion.__dict__, "num_train_timesteps": 200}))
    with pytest.raises(ConfigError, match="start at the last training timestep 199.*set sampling.timesteps=null"):
        sample(model, longer, (1, 12, 1), sampling, progress=False)
