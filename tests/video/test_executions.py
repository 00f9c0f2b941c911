"""Executed plans as data (VideoAgent-Online's new clips, the critic's labels), the simulator feedback,
and an online iteration end to end: in MetaWorld, on CPU."""
import json

import numpy as np
import pytest

RENDER = 128


def oracle():
    from robotics.planners import OraclePlanner

    return OraclePlanner(8, RENDER)


def strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_successful_executions_become_exactly_the_new_clips(tmp_path):
    from robotics.planners import RepeatFirstFramePlanner
    from video.data import DemoClips
    from video.executions import execute_plans, read_episodes

    good = execute_plans(oracle(), ["handle-press"], ["corner"], [102, 104], tmp_path / "oracle", draws=2,
                         resolution=RENDER, progress=False)
    bad = execute_plans(RepeatFirstFramePlanner(8), ["handle-press"], ["corner"], [102], tmp_path / "still",
                        resolution=RENDER, progress=False)
    assert [r["success"] for r in good] == [True] * 4 and not bad[0]["success"]
    assert [r["kept_as_clip"] for r in good] == [True, False, True, False]  # one clip per scene
    index = json.loads((tmp_path / "oracle" / "successes" / "index.json").read_text())
    assert [(e["seed"], e["success"]) for e in index["episodes"]] == [(102, True), (104, True)]
    clips = DemoClips(tmp_path / "oracle" / "successes", 16, frames=8)
    assert len(clips) == 2 and clips.texts == ["handle press"]
    assert len(clips.episodes[0].video) == good[0]["steps"] + 1  # every executed frame, the first included
    assert json.loads((tmp_path / "still" / "successes" / "index.json").read_text())["episodes"] == []
    with np.load(tmp_path / "oracle" / good[0]["plan"], allow_pickle=False) as z:
        assert z["plan"].shape == (8, RENDER, RENDER, 3) and bool(z["success"]) and str(z["text"]) == "handle press"
    assert strip(read_episodes(tmp_path / "oracle")) == strip(good)


def test_an_interrupted_execution_resumes_to_the_same_data(tmp_path, monkeypatch):
    import robotics.execution
    from video.executions import execute_plans, read_episodes

    scenes = (["handle-press"], ["corner"], [102, 103, 104])
    whole = execute_plans(oracle(), *scenes, tmp_path / "whole", resolution=RENDER, progress=False)
    real, calls = robotics.execution.run_episode, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(robotics.execution, "run_episode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        execute_plans(oracle(), *scenes, tmp_path / "resumed", resolution=RENDER, progress=False)
    assert len(read_episodes(tmp_path / "resumed")) == 1
    resumed = execute_plans(oracle(), *scenes, tmp_path / "resumed", resolution=RENDER, progress=False)
    assert len(calls) == 4  # the finished episode was not run again
    assert strip(resumed) == strip(whole)
    for r in whole:
        with np.load(tmp_path / "whole" / r["plan"]) as a, np.load(tmp_path / "resumed" / r["plan"]) as b:
            assert np.array_equal(a["plan"], b["plan"])


def test_the_simulator_feedback_accepts_what_succeeds_and_nothing_else():
    from robotics.planners import RepeatFirstFramePlanner
    from video.feedback import PlanSample, SimulatorFeedback

    feedback, planner = SimulatorFeedback(resolution=RENDER), oracle()
    feedback.begin_episode("handle-press", "corner", 102)
    planner.begin_episode("handle-press", "corner", 102)
    first = feedback.start_frame
    good = planner.plan(first, "handle press", "corner")
    still = RepeatFirstFramePlanner(8).plan(first, "handle press", "corner")
    yes, no = feedback(PlanSample(good, first, "handle press"), 0), feedback(PlanSample(still, first, "handle press"), 0)
    assert yes.accept and yes.score == 1.0 and "success" in yes.reason
    assert not no.accept and "failure" in no.reason
    later = feedback(PlanSample(good, np.zeros_like(first), "handle press"), 1)
    assert not later.accept and "first state only" in later.reason
    feedback.close()
