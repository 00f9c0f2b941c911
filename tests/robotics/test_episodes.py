"""Executing plans: oracle success, the repeat-first floor, bad plans, faults, and evaluation resume."""
import json

import numpy as np
import pytest

from gencond.errors import UserError

from robotics.avdc import AvdcFollower
from robotics.envs import TaskEnv
from robotics.evaluate import evaluate
from robotics.execution import run_episode
from robotics.planners import OraclePlanner, PlanError, RepeatFirstFramePlanner, validate_plan


def test_oracle_plan_executed_by_avdc_succeeds():
    env = TaskEnv("button-press-topdown", "corner", 128)
    planner = OraclePlanner(num_frames=8)
    result = run_episode(env, planner, AvdcFollower(), seed=0)
    planner.close()
    env.close()
    assert result.error is None
    assert result.success and result.steps < 300


def test_repeat_first_frame_planner_is_the_floor():
    env = TaskEnv("door-open", "corner", 64)
    result = run_episode(env, RepeatFirstFramePlanner(), AvdcFollower(), seed=0)
    env.close()
    assert not result.success and result.error is None and result.steps == 500
    assert result.replans == 5  # the plan shows no motion: the hand reaches the handle, stops, replans


def test_oracle_plan_starts_at_the_observation_and_continues_after_a_replan():
    planner = OraclePlanner(num_frames=8, resolution=64)
    planner.begin_episode("handle-press", "corner", 2)
    frames = planner._frames
    plan = planner.plan(frames[0], "handle press", "corner")
    assert plan.shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(plan[0], frames[0])
    np.testing.assert_array_equal(plan[-1], frames[-1])
    later = planner.plan(frames[len(frames) // 2], "handle press", "corner")
    np.testing.assert_array_equal(later[0], frames[len(frames) // 2])
    planner.close()


@pytest.mark.parametrize("plan, message", [
    (np.zeros((8, 64, 64), np.uint8), r"shape \(T\+1, H, W, 3\)"),
    (np.zeros((1, 64, 64, 3), np.uint8), "at least one future frame"),
    (np.zeros((8, 64, 64, 3), np.float32), "uint8"),
    ([np.zeros((64, 64, 3), np.uint8)], "numpy array"),
])
def test_bad_plans_are_clear_errors(plan, message):
    with pytest.raises(PlanError, match=message):
        validate_plan(plan)


class _BrokenPlanner:
    def plan(self, frame, task, camera):
        return frame.astype(np.float64)[None].repeat(8, 0)


def test_bad_planner_output_stops_the_evaluation(tmp_path):
    with pytest.raises(PlanError, match="uint8"):
        evaluate(_BrokenPlanner(), AvdcFollower, ["handle-press"], ["corner"], [0], tmp_path,
                 resolution=64, videos=0, progress=False)


class _ExplodingFollower(AvdcFollower):
    def act(self, env, state, rgb=None):
        if env.steps == 5:
            raise FloatingPointError("simulated instability")
        return super().act(env, state, rgb)


def test_a_fault_fails_one_episode_and_evaluation_resumes(tmp_path):
    planner = RepeatFirstFramePlanner()
    table = evaluate(planner, _ExplodingFollower, ["handle-press"], ["corner"], [0, 1], tmp_path,
                     resolution=64, max_steps=60, videos=1, progress=False)
    assert table["episodes"] == 2 and table["errors"] == 2 and table["overall"] == 0.0
    lines = (tmp_path / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert "FloatingPointError: simulated instability" in json.loads(lines[0])["error"]
    assert (tmp_path / "videos" / "handle-press_corner_seed0.gif").stat().st_size > 1000
    md = (tmp_path / "results.md").read_text()
    assert "| handle-press |" in md and "**overall**" in md
    # a rerun with one more seed runs only the new episode
    table = evaluate(planner, _ExplodingFollower, ["handle-press"], ["corner"], [0, 1, 2], tmp_path,
                     resolution=64, max_steps=60, videos=0, progress=False)
    assert table["episodes"] == 3 and table["episodes_run_now"] == 1 and table["errors"] == 3
    assert len((tmp_path / "episodes.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("suffix", ["gif", "mp4"])
def test_side_by_side_video_has_plan_left_and_execution_right(tmp_path, suffix):
    import imageio.v2 as imageio

    from robotics.evaluate import LABEL_HEIGHT, write_side_by_side

    executed = [np.full((32, 48, 3), 190 + 10 * i, np.uint8) for i in range(6)]
    plan = np.zeros((4, 16, 24, 3), np.uint8)  # another resolution: resized to the executed frames
    path = write_side_by_side(tmp_path / f"ep.{suffix}", executed, [(0, plan)], fps=5)
    frames = imageio.mimread(path)
    assert len(frames) == 6 and frames[0].shape[:2] == (LABEL_HEIGHT + 32, 98)
    below = frames[0][LABEL_HEIGHT:]
    assert below[:, :48, :3].mean() < 20 and below[:, 50:, :3].mean() > 180


def test_paired_test_is_exact_mcnemar_on_shared_episodes():
    from robotics.evaluate import paired_test

    def recs(successes):
        return [{"task": "door-open", "camera": "corner", "seed": i, "success": s} for i, s in enumerate(successes)]

    a = recs([True] * 8 + [False] * 2 + [True] * 10)
    b = recs([False] * 8 + [True] * 2 + [True] * 10)
    r = paired_test(a, b)
    # 8 vs 2 discordant: p = 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * 56 / 1024
    assert (r["only_first"], r["only_second"], r["episodes"]) == (8, 2, 20)
    assert r["p_value"] == round(2 * 56 / 1024, 4) and r["difference_points"] == 30.0
    assert paired_test(a, a)["p_value"] == 1.0
    with pytest.raises(UserError, match="share no episode"):
        paired_test(a, [{**a[0], "seed": 99}])
