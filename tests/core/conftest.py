import pytest

from .toys import register_toy_task

TOY = """task: toy-mlp
diffusion: {num_train_timesteps: 50}
train: {max_steps: 6, batch_size: 8, log_every: 1, checkpoint_every: 2, keep_checkpoints: 5, threads: 1}
"""


@pytest.fixture
def toy_config(tmp_path):
    """A config of the tiny 'toy-mlp' task (trains in about a second)."""
    register_toy_task()
    path = tmp_path / "toy.yaml"
    path.write_text(TOY)
    return path
