"""gencond.pipeline: one object from a run folder to a ready sampler, the one seed mix and the one thread setting."""
import argparse

import pytest
import torch
from safetensors.torch import load_model, save_model

from gencond.arguments import add_sampling_arguments
from gencond.config import RunConfig, load_config, save_config
from gencond.diffusion import DiffusionProcess
from gencond.errors import UserError
from gencond.pipeline import Pipeline, seed_mix, seeded_generator, set_threads
from gencond.registry import register_task
from gencond.sampling import sample
from gencond.training import step_generator

from .toys import TinyMLP


def _load_tiny(folder):
    model = TinyMLP(8)
    load_model(model, str(folder / "model.safetensors"))
    return model


register_task("toy-pipeline", RunConfig, lambda cfg: None, load_model=_load_tiny)


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as `gencond train` leaves it: its config and last weights."""
    (tmp_path / "toy.yaml").write_text("task: toy-pipeline\ndiffusion: {num_train_timesteps: 50}\n"
                                       "sampling: {scheduler: ddim, num_steps: 4}\ntrain: {threads: 1}\n")
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    save_config(load_config(tmp_path / "toy.yaml"), run / "config.yaml")
    torch.manual_seed(0)
    save_model(TinyMLP(8), str(run / "model" / "model.safetensors"))
    return run


def test_from_run_holds_the_model_its_process_and_settings_and_samples_as_the_sampler_does(run_dir):
    pipeline = Pipeline.from_run(run_dir, task="toy-pipeline", device="cpu")
    assert pipeline.cfg.task == "toy-pipeline" and not pipeline.model.training and pipeline.device == torch.device("cpu")
    assert pipeline.process.num_timesteps == 50 and pipeline.sampling.num_steps == 4
    got = pipeline.sample((3, 8), generator=pipeline.generator(7, 1), progress=False)
    want = sample(_load_tiny(run_dir / "model"), DiffusionProcess(pipeline.cfg.diffusion), (3, 8), pipeline.sampling,
                  generator=seeded_generator(7, 1), progress=False)
    assert torch.equal(got, want)
    with pytest.raises(UserError, match="is a 'toy-pipeline' run; this command needs a 'tsdiff' run"):
        Pipeline.from_run(run_dir, task="tsdiff")


def test_from_args_applies_the_sampling_flags_and_threads(run_dir):
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    add_sampling_arguments(parser)
    threads = torch.get_num_threads()
    try:
        pipeline = Pipeline.from_args(parser.parse_args([str(run_dir), "--steps", "2", "--scheduler", "ddpm",
                                                         "--threads", "1"]), device="cpu", cfg_scale=None)
        assert (pipeline.sampling.scheduler, pipeline.sampling.num_steps) == ("ddpm", 2) and torch.get_num_threads() == 1
        listed = Pipeline.from_args(parser.parse_args([str(run_dir), "--timesteps", "49:0:7"]), device="cpu")
        assert listed.sampling.num_steps is None and listed.sampling.timesteps == [49, 42, 35, 28, 21, 14, 7, 0]
        with pytest.raises(UserError, match="--steps 60: the model was trained on 50 timesteps"):
            Pipeline.from_args(parser.parse_args([str(run_dir), "--steps", "60"]), device="cpu")
    finally:
        torch.set_num_threads(threads)


def test_the_seed_mix_is_written_once_and_keeps_its_numbers():
    draw = seeded_generator(3, 5, 2)
    assert torch.equal(torch.rand(4, generator=draw),
                       torch.rand(4, generator=torch.Generator().manual_seed(3 * 1_000_003 + 5 + 2 * 7_919_009)))
    assert seed_mix(3) == 3_000_009 and Pipeline.generator is seeded_generator
    assert step_generator(2, 10, 1).initial_seed() == ((2 * 1_000_003 + 10) * 1009 + 1) % 2**62  # the trainer's
    with pytest.raises(ValueError, match="at most 2 parts"):
        seed_mix(1, 2, 3, 4)


def test_threads_are_set_in_one_place_and_bad_counts_are_refused():
    threads = torch.get_num_threads()
    try:
        set_threads(None)
        assert torch.get_num_threads() == threads
        set_threads(1)
        assert torch.get_num_threads() == 1
        for bad in (0, True, "2"):
            with pytest.raises(UserError, match="threads must be an integer ≥ 1"):
                set_threads(bad)
    finally:
        torch.set_num_threads(threads)
