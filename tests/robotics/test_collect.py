"""Expert data on disk: format round-trip, determinism per seed, resumption."""
import json

import numpy as np
import pytest

from gencond.errors import UserError
from robotics.collect import FORMAT, collect, episode_path, load_dataset, load_demonstration, read_index
from robotics.envs import TaskEnv
from robotics.experts import run_expert


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("demos")
    index = collect(root, ["handle-press"], ["corner", "corner3"], [0, 1], resolution=64, progress=False)
    return root, index


def test_index_lists_every_episode(dataset):
    root, index = dataset
    assert index["format"] == FORMAT and index["resolution"] == [64, 64]
    assert sorted((e["camera"], e["seed"]) for e in index["episodes"]) == [
        ("corner", 0), ("corner", 1), ("corner3", 0), ("corner3", 1)]
    assert all(e["success"] for e in index["episodes"])  # the expert solves handle-press
    assert json.loads((root / "index.json").read_text()) == index


def test_round_trip_matches_a_fresh_rollout(dataset):
    root, _ = dataset
    demo = load_demonstration(episode_path(root, "handle-press", "corner3", 1))
    env = TaskEnv("handle-press", "corner3", 64)
    fresh = run_expert(env, 1)
    env.close()
    assert demo.env_task == "handle-press" and demo.camera == "corner3" and demo.seed == 1
    assert demo.text == "handle press"
    assert demo.frames.shape == (len(demo) + 1, 64, 64, 3) and demo.frames.dtype == np.uint8
    assert demo.actions.shape == (len(demo), 4) and demo.states.shape == (len(demo) + 1, 39)
    assert demo.success and demo.success_step == len(demo)
    np.testing.assert_array_equal(demo.frames, fresh.frames)  # deterministic per seed
    np.testing.assert_allclose(demo.actions, fresh.actions)
    np.testing.assert_allclose(demo.first_depth, fresh.first_depth)
    np.testing.assert_array_equal(demo.first_segmentation, fresh.first_segmentation)
    np.testing.assert_allclose(demo.world_to_camera, fresh.world_to_camera)


def test_rerun_skips_finished_episodes_and_fills_gaps(dataset):
    root, _ = dataset
    kept = episode_path(root, "handle-press", "corner", 0)
    removed = episode_path(root, "handle-press", "corner", 1)
    stamp = kept.stat().st_mtime_ns
    removed.unlink()
    index = collect(root, ["handle-press"], ["corner", "corner3"], [0, 1], resolution=64, progress=False)
    assert kept.stat().st_mtime_ns == stamp  # not redone
    assert removed.exists() and len(index["episodes"]) == 4
    assert not list(root.rglob("*.tmp.npz"))


def test_load_dataset_filters(dataset):
    root, _ = dataset
    demos = load_dataset(root, cameras=["corner3"])
    assert {(d.camera, d.seed) for d in demos} == {("corner3", 0), ("corner3", 1)}


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"no dataset at .* \(missing index.json\)"):
        read_index(tmp_path)
