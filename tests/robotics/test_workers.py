"""Episodes split across worker processes give the same records as one process; planners named by
``MODULE:ATTR`` and by registered prefixes (``video:RUN_DIR``) on the command line."""
import functools
import json

import pytest

from gencond.cli import main
from gencond.errors import UserError

QUICK = ["--tasks", "handle-press", "--cameras", "corner", "--resolution", "32", "--videos", "0", "--quiet"]


def _records(out):
    lines = (out / "episodes.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda r: r["seed"])


def test_two_workers_record_what_one_process_records(tmp_path):
    from robotics.avdc import AvdcFollower
    from robotics.evaluate import evaluate
    from robotics.planners import OraclePlanner

    planner = functools.partial(OraclePlanner, 4, 32)
    kwargs = dict(resolution=32, max_steps=60, videos=1, progress=False)
    one = evaluate(planner, AvdcFollower, ["handle-press"], ["corner"], [0, 1, 2], tmp_path / "one", **kwargs)
    two = evaluate(planner, AvdcFollower, ["handle-press"], ["corner"], [0, 1, 2], tmp_path / "two", workers=2,
                   **kwargs)
    drop = ("seconds",)
    assert ([{k: v for k, v in r.items() if k not in drop} for r in _records(tmp_path / "one")]
            == [{k: v for k, v in r.items() if k not in drop} for r in _records(tmp_path / "two")])
    assert one["overall"] == two["overall"] and two["episodes"] == 3
    assert (tmp_path / "two" / "videos" / "handle-press_corner_seed0.gif").is_file()


def test_workers_need_a_planner_factory(tmp_path):
    from robotics.avdc import AvdcFollower
    from robotics.evaluate import evaluate
    from robotics.planners import RepeatFirstFramePlanner

    with pytest.raises(ValueError, match="planner factory"):
        evaluate(RepeatFirstFramePlanner(4), AvdcFollower, ["handle-press"], ["corner"], [0, 1], tmp_path,
                 resolution=32, max_steps=5, videos=0, progress=False, workers=2)
    with pytest.raises(UserError, match="--workers 0"):
        evaluate(RepeatFirstFramePlanner(4), AvdcFollower, ["handle-press"], ["corner"], [0], tmp_path,
                 resolution=32, max_steps=5, videos=0, progress=False, workers=0)


def test_module_attr_planners(tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate-planner", "--planner", "robotics.planners:RepeatFirstFramePlanner", "--seeds", "1",
            "--out", str(out), *QUICK]
    assert main(args) == 0
    identity = json.loads((out / "evaluation.json").read_text())
    assert identity["planner"] == "RepeatFirstFramePlanner(num_frames=8)"
    for spec, message in (("robotics.planners:NoSuchPlanner", "cannot import 'NoSuchPlanner'"),
                          ("no_such_module:thing", "from module 'no_such_module'"),
                          ("robotics.envs:CAMERAS", "not a planner"),
                          ("video:", "needs a run folder"),
                          ("bogus", "valid planners")):
        capsys.readouterr()
        assert main(["evaluate-planner", "--planner", spec, "--out", str(tmp_path / "x"), *QUICK]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, (spec, err)


def test_planner_prefixes_come_from_the_domains_that_register_them(monkeypatch):
    """robotics names no video module: the video domain registers ``video:`` and ``videoagent:`` into
    robotics' planner registry; an unregistered prefix names the registered ones, or the extra to install."""
    from robotics import planners
    from robotics.register import make_planner

    registered = planners.planner_plugins()
    assert {"video", "videoagent"} <= set(registered) and registered["video"].module == "video.register"
    with pytest.raises(ValueError, match="registered twice"):
        planners.register_planner("video", lambda arg: None, "video:X", "another video planner", "a run folder")
    with pytest.raises(UserError, match="registered planner prefixes: video:, videoagent:"):
        make_planner("nowhere:thing", None, 128)
    from gencond import registry

    monkeypatch.setattr(planners, "PLANNER_PLUGINS", {})  # as if the video domain had not loaded
    monkeypatch.setattr(registry, "UNAVAILABLE", {"video": 'needs the package \'cv2\': pip install "gencond[video]"'})
    with pytest.raises(UserError, match=r'domain \'video\' did not load .*pip install "gencond\[video\]"'):
        make_planner("video:runs/x", None, 128)


def test_video_planner_spec_refuses_a_run_of_another_task(tmp_path, capsys):
    run = tmp_path / "runs" / "toy"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("task: toy-task\n")
    assert main(["evaluate-planner", "--planner", f"video:{run}", "--out", str(tmp_path / "x"), *QUICK]) == 2
    err = capsys.readouterr().err
    assert "'toy-task' run" in err and "video-planner" in err
