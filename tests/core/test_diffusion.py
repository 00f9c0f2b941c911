import pytest
import torch

from gencond.config import ConfigError, DiffusionConfig
from gencond.diffusion import DiffusionProcess

from .toys import GaussianOracle, Recorder


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_target_and_x0_round_trip(prediction_type):
    process = DiffusionProcess(DiffusionConfig(num_train_timesteps=100, beta_end=0.1, prediction_type=prediction_type))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(16, 5, 3, generator=g), torch.randn(16, 5, 3, generator=g)
    t = torch.randint(0, 100, (16,), generator=g)
    x_t = process.add_noise(x0, noise, t)
    abar = process.scheduler.alphas_cumprod[t].reshape(-1, 1, 1)
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    x0_hat, eps_hat = process.x0_and_eps(x_t, process.target(x0, noise, t), t)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_hat, noise, atol=1e-4, rtol=1e-4)


def test_v_target_matches_scheduler_velocity():
    process = DiffusionProcess(DiffusionConfig(prediction_type="v_prediction"))
    x0, noise, t = torch.randn(4, 6), torch.randn(4, 6), torch.tensor([0, 10, 500, 999])
    abar = process.scheduler.alphas_cumprod[t][:, None]
    torch.testing.assert_close(process.target(x0, noise, t), abar.sqrt() * noise - (1 - abar).sqrt() * x0)


def test_min_snr_weights():
    process = DiffusionProcess(DiffusionConfig(min_snr_gamma=5.0))
    t = torch.arange(0, 1000, 50)
    snr = process.snr(t)
    w = process.loss_weight(t)
    torch.testing.assert_close(w, (torch.clamp(snr, max=5.0) / snr).float())
    assert w.max() <= 1.0 and w[-1] == 1.0 and w[0] < 0.01  # noisy steps keep weight 1, clean ones are damped
    assert torch.all(DiffusionProcess(DiffusionConfig()).loss_weight(t) == 1)


def test_masked_entries_do_not_count():
    process = DiffusionProcess(DiffusionConfig(num_train_timesteps=100))
    model = GaussianOracle(process)  # acts entry by entry, so unobserved inputs cannot leak
    x0 = torch.randn(8, 4)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0]).expand(8, 4)
    other = x0.clone()
    other[:, 2:] += 100.0  # change only unobserved entries
    a, _ = process.training_loss(model, x0, mask=mask, generator=torch.Generator().manual_seed(1))
    b, _ = process.training_loss(model, other, mask=mask, generator=torch.Generator().manual_seed(1))
    assert torch.isclose(a, b)


def test_self_conditioning_first_pass_feeds_second():
    process = DiffusionProcess(DiffusionConfig(num_train_timesteps=100, self_condition_prob=1.0))
    model = Recorder(4)
    process.training_loss(model, torch.randn(8, 4), generator=torch.Generator().manual_seed(0))
    first, second = model.calls
    assert first["self_cond"] is None and not first["grad"]
    assert second["self_cond"] is not None and second["grad"]
    model.calls.clear()
    DiffusionProcess(DiffusionConfig(self_condition_prob=0.0)).training_loss(model, torch.randn(8, 4))
    assert len(model.calls) == 1 and model.calls[0]["self_cond"] is None


def test_condition_dropout_uses_null_condition():
    process = DiffusionProcess(DiffusionConfig(cond_drop_prob=0.5))
    model = Recorder(4)
    cond = torch.ones(1000)
    process.training_loss(model, torch.randn(1000, 4), cond=cond, generator=torch.Generator().manual_seed(0))
    seen = model.calls[0]["cond"]
    assert set(seen.unique().tolist()) == {0.0, 1.0}
    assert 0.4 < (seen == 0).float().mean() < 0.6


def test_bad_prediction_type_is_a_clear_error():
    with pytest.raises(ConfigError, match="prediction_type 'eps'"):
        DiffusionProcess(DiffusionConfig(prediction_type="eps"))
