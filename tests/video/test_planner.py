"""The video planner end to end on a synthetic demonstration set whose motion only the text decides:
data, training through the CLI, the text path, the robotics Planner protocol, and its errors."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from gencond import cli
from gencond.errors import UserError

RES = 16
CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "video" / "metaworld_small.yaml")


def moving_square(direction: int, start: int, steps: int = 12, speed: int = 1) -> np.ndarray:
    """A white square on grey moving right (+1) or left (-1) by ``speed`` pixels a frame: (steps, RES, RES, 3)."""
    frames = np.full((steps, RES, RES, 3), 90, np.uint8)
    for k in range(steps):
        x = int(np.clip(start + speed * direction * k, 0, RES - 4))
        frames[k, 6:10, x:x + 4] = 255
    return frames


def write_square_demos(root: Path, starts, steps: int = 12, speed=1) -> Path:
    """'door open' moves the square right, 'door close' moves it left, from the same start frames
    (``speed``: pixels a frame, or one speed per start)."""
    from robotics.collect import save_demonstration, write_index
    from robotics.experts import Demonstration

    for task, direction in (("door-open", 1), ("door-close", -1)):
        for seed, start in enumerate(starts):
            frames = moving_square(direction, start, steps, speed if isinstance(speed, int) else speed[seed])
            n = len(frames)
            demo = Demonstration(env_task=task, camera="corner", seed=seed, frames=frames,
                                 actions=np.zeros((n - 1, 4), np.float32), states=np.zeros((n, 39), np.float32),
                                 success=True, success_step=n - 1, intrinsics=np.eye(3), world_to_camera=np.eye(4),
                                 first_depth=np.ones((RES, RES), np.float32), first_segmentation=np.zeros((RES, RES), np.int32),
                                 object_geom_ids=np.zeros(1, np.int32))
            save_demonstration(demo, root / task / "corner" / f"seed_{seed}.npz")
    write_index(root, (RES, RES))
    return root


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    return write_square_demos(tmp_path_factory.mktemp("demos"), (5, 6, 7))


def train_tiny(demos: Path, runs: Path, steps: int, *extra: str) -> Path:
    torch.manual_seed(0)
    assert cli.main(["train", CONFIG, f"runs_dir={runs}", "name=tiny",
                     f"data.root={demos}", f"data.resolution={RES}", "data.frames=4", "model.base_channels=8",
                     "model.channel_mult=[1,2]", "model.attention_resolutions=[]", "model.head_channels=8",
                     f"train.max_steps={steps}", "train.batch_size=8", "train.lr=3e-3", "train.warmup_steps=5",
                     f"train.checkpoint_every={steps}", "train.log_every=10", "sampling.num_steps=10", *extra,
                     "--quiet"]) == 0
    return runs / "tiny"


def test_clips_follow_avdc_sampling(demos):
    from video.data import DemoClips, clip_indices

    assert clip_indices(12, 4, 4).tolist() == [4, 6, 9, 11]
    clips = DemoClips(demos, RES, frames=4)
    assert clips.texts == ["door close", "door open"] and len(clips) == 6
    batch = clips.batch(5, torch.Generator().manual_seed(0))
    assert batch["video"].shape == (5, 3, 3, RES, RES) and batch["first_frame"].shape == (5, 3, RES, RES)
    assert batch["video"].min() >= -1 and batch["video"].max() <= 1


def test_missing_demos_name_the_collect_command(tmp_path):
    from video.data import DemoClips

    with pytest.raises(UserError, match=r"gencond collect --out .*nowhere"):
        DemoClips(tmp_path / "nowhere", RES)


@pytest.fixture(scope="module")
def trained(demos, tmp_path_factory):
    return train_tiny(demos, tmp_path_factory.mktemp("runs"), 40, "train.ema_decay=0.9", "sampling.num_steps=5")


def test_training_lowers_the_loss_and_the_planner_returns_plans(trained):
    import json

    from video.planner import VideoPlanner

    losses = [json.loads(line)["loss"] for line in (trained / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert losses[-1] < 0.7 * losses[0]
    planner = VideoPlanner(trained, seed=1)
    first = moving_square(1, 6)[0]
    plan = planner.plan(first, "door open", "corner")
    assert plan.shape == (4, RES, RES, 3) and plan.dtype == np.uint8
    assert np.array_equal(plan[0], first)  # the plan starts at the observation
    again = VideoPlanner(trained, seed=1).plan(first, "door open", "corner")
    assert np.array_equal(plan, again)  # seeded: the same plan again


def test_the_planner_runs_an_episode_through_the_robotics_evaluator(trained, tmp_path):
    from robotics.avdc import AvdcFollower
    from robotics.evaluate import evaluate
    from video.planner import VideoPlanner

    table = evaluate(VideoPlanner(trained), AvdcFollower, ["door-open"], ["corner"], [100], tmp_path, resolution=64,
                     max_steps=40, max_replans=0, videos=0, progress=False)
    assert table["episodes"] == 1 and table["errors"] == 0


def test_planner_input_errors(trained, tmp_path):
    from video.planner import VideoPlanner

    planner = VideoPlanner(trained)
    big = np.kron(moving_square(1, 6)[0], np.ones((4, 4, 1), np.uint8))  # 64x64: resized to the model's 16
    assert planner.plan(big, "door open", "corner").shape == (4, RES, RES, 3)
    with pytest.raises(UserError, match="uint8 RGB array"):
        planner.plan(big.astype(np.float32), "door open", "corner")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        planner.plan(big, "pick up the hammer", "corner")
    assert any("never seen in training" in str(w.message) and "door open" in str(w.message) for w in caught)
    (tmp_path / "config.yaml").write_text("task: tsdiff\n")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UserError, match="is a 'tsdiff' run; a video planner needs a 'video-planner' run"):
        VideoPlanner(tmp_path)


def square_x(frame: np.ndarray) -> float:
    """Column centroid of the white square in a uint8 frame."""
    bright = frame.min(-1) > 200
    return float(np.nonzero(bright)[1].mean())


def test_the_trained_planner_moves_the_way_the_instruction_says(tmp_path):
    """Both instructions' episodes start from the same frame, so from that frame only the text tells the
    planner which way to go (clips starting later show the way in their first frame)."""
    from video.planner import VideoPlanner

    demos = write_square_demos(tmp_path / "demos", (6,), steps=5, speed=2)
    run = train_tiny(demos, tmp_path / "runs", 800, "train.ema_decay=0.99")
    first = moving_square(1, 6)[0]
    start = square_x(first)
    ends = []
    for seed in range(4):
        planner = VideoPlanner(run, seed=seed)
        ends.append([square_x(planner.plan(first, text, "corner")[-1]) for text in ("door open", "door close")])
    ends = np.array(ends)  # (seed, [open, close]): the square's x in the plan's last frame
    assert (ends[:, 0] > start + 1).all() and (ends[:, 1] < start - 1).all(), ends
    assert ends[:, 0].mean() > start + 3 and ends[:, 1].mean() < start - 3, ends


def test_evaluating_on_the_training_seeds_warns(trained, tmp_path):
    from robotics.avdc import AvdcFollower
    from robotics.evaluate import evaluate
    from video.planner import VideoPlanner

    planner = VideoPlanner(trained)
    assert planner.training_seeds == [0, 1, 2]
    with pytest.warns(UserWarning, match=r"seeds \[1\], which the planner's training demonstrations used"):
        evaluate(planner, AvdcFollower, ["door-open"], ["corner"], [1, 100], tmp_path, resolution=64,
                 max_steps=5, max_replans=0, videos=0, progress=False)


def test_an_exported_planner_plans_as_its_run(trained, tmp_path):
    from gencond.cli import main
    from video.planner import VideoPlanner

    first = moving_square(1, 6)[0]
    plan = VideoPlanner(trained, weights="last", seed=1).plan(first, "door open", "corner")
    for dtype in ("float32", "float16"):
        out = tmp_path / dtype
        assert main(["export", str(trained), "--out", str(out), "--weights", "last", "--dtype", dtype]) == 0
        exported = VideoPlanner(out, seed=1).plan(first, "door open", "corner")
        if dtype == "float32":
            assert np.array_equal(plan, exported)  # the same EMA weights, the same plan
        else:  # half-precision weights: the same plan up to a few levels of 255 in places
            assert np.abs(plan.astype(int) - exported.astype(int)).mean() < 2
