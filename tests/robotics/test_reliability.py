"""No silently wrong results: evaluation identity, benchmark result names, wrong --idm runs, bad
resolutions and seeds, and labelled side-by-side videos."""
import json
from pathlib import Path

import numpy as np
import pytest

from gencond.cli import main
from gencond.errors import UserError
from robotics.register import parse_seeds

QUICK = ["--tasks", "handle-press", "--cameras", "corner", "--seeds", "1", "--resolution", "32",
         "--videos", "0", "--quiet"]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_rerun_with_another_planner_into_the_same_out_is_refused(tmp_path, capsys):
    out = str(tmp_path / "eval")
    assert main(["evaluate-planner", "--planner", "repeat-first", "--plan-frames", "4", "--out", out, *QUICK]) == 0
    identity = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert identity["planner"] == "repeat-first" and identity["plan_frames"] == 4 and "gencond" in identity
    capsys.readouterr()
    # the same evaluation resumes: nothing run again
    assert main(["evaluate-planner", "--planner", "repeat-first", "--plan-frames", "4", "--out", out, *QUICK]) == 0
    assert "all 1 episodes resumed" in capsys.readouterr().out
    assert main(["evaluate-planner", "--planner", "oracle", "--plan-frames", "6", "--out", out, *QUICK]) == 2
    err = _error(capsys)
    assert err.startswith("gencond evaluate-planner: error:") and "another --out" in err
    assert "planner" in err and "plan_frames" in err and "extractor" not in err
    assert len((tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()) == 1


def test_python_callers_get_an_identity_from_the_objects(tmp_path):
    from robotics.avdc import AvdcFollower
    from robotics.evaluate import evaluate
    from robotics.planners import RepeatFirstFramePlanner

    evaluate(RepeatFirstFramePlanner(4), AvdcFollower, ["handle-press"], ["corner"], [0], tmp_path,
             resolution=32, max_steps=5, videos=0, progress=False)
    with pytest.raises(UserError, match="planner"):
        evaluate(RepeatFirstFramePlanner(6), AvdcFollower, ["handle-press"], ["corner"], [0], tmp_path,
                 resolution=32, max_steps=5, videos=0, progress=False)
    with pytest.raises(UserError, match="max_steps"):
        evaluate(RepeatFirstFramePlanner(4), AvdcFollower, ["handle-press"], ["corner"], [0], tmp_path,
                 resolution=32, max_steps=6, videos=0, progress=False)


def test_episodes_without_an_identity_are_refused(tmp_path):
    from robotics.avdc import AvdcFollower
    from robotics.evaluate import evaluate
    from robotics.planners import RepeatFirstFramePlanner

    (tmp_path / "episodes.jsonl").write_text(json.dumps(
        {"task": "handle-press", "camera": "corner", "seed": 0, "success": True, "steps": 10}) + "\n")
    with pytest.raises(UserError, match="no evaluation.json"):
        evaluate(RepeatFirstFramePlanner(4), AvdcFollower, ["handle-press"], ["corner"], [0], tmp_path,
                 resolution=32, max_steps=5, videos=0, progress=False)


def test_benchmark_result_names_carry_non_default_settings():
    from robotics.results import evaluate_name

    assert evaluate_name("oracle", "avdc") == "evaluate_oracle_avdc"
    assert evaluate_name("oracle", "avdc", seeds="100-100") == "evaluate_oracle_avdc_seeds100-100"
    assert evaluate_name("oracle", "avdc", seeds="100-104", resolution=128) == "evaluate_oracle_avdc"  # the defaults
    assert (evaluate_name("repeat-first", "avdc", "x", tasks="door-open", cameras="corner", plan_frames=4)
            == "evaluate_repeat-first_avdc_tasks-door-open_cameras-corner_frames4_x")
    assert evaluate_name("video:runs/metaworld_small/", "idm") == "evaluate_video-metaworld_small_idm"


def test_benchmark_never_overwrites_a_result_with_more_episodes(tmp_path):
    from robotics.results import save_result

    path = tmp_path / "robotics_evaluate_x.json"
    save_result(path, {"episodes": 165})
    with pytest.raises(UserError, match="165 episodes"):
        save_result(path, {"episodes": 1})
    assert json.loads(path.read_text())["episodes"] == 165
    save_result(path, {"episodes": 165})  # a rerun of the same size replaces it


def _table(seeds, corner, corner2, identity="p"):
    n = len(seeds)
    rates = {"corner": 100 * corner / n, "corner2": 100 * corner2 / n}
    return {"identity": {"planner": identity}, "seeds": list(seeds), "errors": 0, "mean_steps": 300.0,
            "episodes": 2 * n, "per_task": {"door-open": {"success": round(100 * (corner + corner2) / (2 * n), 1),
                                                          "episodes": 2 * n, "cameras": rates}}}


def test_combined_evaluations_sum_success_counts_over_disjoint_seeds():
    from robotics.results import combine_tables

    table = combine_tables([_table(range(100, 110), 3, 7), _table(range(110, 125), 1, 15)])
    row = table["per_task"]["door-open"]
    assert row["episodes"] == 50 and row["cameras"] == {"corner": 16.0, "corner2": 88.0}
    assert table["overall"] == 52.0 and table["episodes"] == 50 and table["seeds"] == list(range(100, 125))
    with pytest.raises(UserError, match="different identities"):
        combine_tables([_table(range(3), 1, 1), _table(range(3, 6), 1, 1, identity="q")])
    with pytest.raises(UserError, match=r"share seeds \[2\]"):
        combine_tables([_table(range(3), 1, 1), _table(range(2, 6), 1, 1)])


def test_benchmark_keeps_the_evaluations_episode_records_in_protocol_order(tmp_path):
    from robotics.results import episode_records

    out = tmp_path / "run"
    out.mkdir()
    recs = [{"task": "door-open", "camera": c, "seed": s, "success": s == 101} for s in (101, 100, 7)
            for c in ("corner2", "corner")]
    (out / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    kept = episode_records(out, ["door-open"], ["corner", "corner2"], [100, 101])
    assert [(r["camera"], r["seed"]) for r in kept] == [("corner", 100), ("corner", 101), ("corner2", 100),
                                                        ("corner2", 101)]
    assert [r["success"] for r in kept] == [False, True, False, True]


def _tiny_idm(folder: Path) -> None:
    from robotics.idm import InverseDynamicsModel

    InverseDynamicsModel(image_size=32, width=8).save_pretrained(folder)


def test_idm_from_a_run_of_another_task_is_refused(tmp_path, capsys):
    run = tmp_path / "tsdiff_run"
    _tiny_idm(run / "model")
    (run / "config.yaml").write_text("task: tsdiff\nname: x\n")
    assert main(["evaluate-planner", "--extractor", "idm", "--idm", str(run), "--out",
                 str(tmp_path / "eval"), *QUICK]) == 2
    assert _error(capsys) == (f"gencond evaluate-planner: error: {run} is a 'tsdiff' run; "
                              "--idm needs a 'robotics-idm' run")


def test_idm_model_folder_of_another_class_is_refused(tmp_path):
    from robotics.idm import load_idm

    _tiny_idm(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    with pytest.raises(UserError, match="'UNet2DModel' model; --idm needs an InverseDynamicsModel"):
        load_idm(tmp_path)


@pytest.mark.parametrize("verb", ["collect", "evaluate-planner"])
@pytest.mark.parametrize("resolution", ["0", "8", "-64"])
def test_too_small_resolution_is_refused(verb, resolution, tmp_path, capsys):
    args = [verb, "--tasks", "handle-press", "--cameras", "corner", "--seeds", "1", "--resolution", resolution,
            "--out", str(tmp_path), "--quiet"]
    assert main(args) == 2
    assert f"resolution {resolution} is too small" in _error(capsys)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("text", ["5-1", "0", "3-2", "1,1"])
def test_empty_or_reversed_seeds_are_errors(text):
    with pytest.raises(UserError, match=f"--seeds '{text}'"):
        parse_seeds(text)


def test_no_episodes_is_an_error_not_none_percent(tmp_path, capsys):
    assert main(["evaluate-planner", "--tasks", ",", "--cameras", "corner", "--seeds", "1", "--out",
                 str(tmp_path), "--quiet"]) == 2
    err = _error(capsys)
    assert "no episodes to evaluate" in err and "None" not in err


def test_side_by_side_halves_are_labelled(tmp_path):
    import imageio.v2 as imageio

    from robotics.evaluate import LABEL_HEIGHT, write_side_by_side

    executed = [np.zeros((128, 128, 3), np.uint8)] * 2
    plan = np.zeros((4, 128, 128, 3), np.uint8)
    frame = imageio.mimread(write_side_by_side(tmp_path / "ep.gif", executed, [(0, plan)]))[0][..., :3]
    assert frame.shape == (LABEL_HEIGHT + 128, 2 * 128 + 2, 3)
    strip = frame[:LABEL_HEIGHT]
    assert strip[:, :128].max() > 200 and strip[:, 130:].max() > 200  # text over each half
    assert frame[LABEL_HEIGHT:, :128].max() == 0 and frame[LABEL_HEIGHT:, 130:].max() == 0  # frames untouched
    # the labels differ: "plan" is shorter than "execution"
    assert (strip[:, :128] > 128).sum() < (strip[:, 130:] > 128).sum()


def test_collect_into_a_dataset_of_another_resolution_is_refused(tmp_path):
    from robotics.collect import collect

    collect(tmp_path, ["handle-press"], ["corner"], [0], resolution=32, progress=False)
    with pytest.raises(UserError, match="holds a dataset at 32 pixels, not 64"):
        collect(tmp_path, ["handle-press"], ["corner"], [1], resolution=64, progress=False)


def test_plan_frames_is_refused_for_planners_that_choose_their_own():
    from robotics.register import evaluation_identity, make_planner

    with pytest.raises(UserError, match="--plan-frames applies to the built-in planners"):
        make_planner("video:runs/nowhere", 4, 128)
    assert make_planner("repeat-first", None, 128).num_frames == 8
    assert "plan_frames" not in evaluation_identity("video:runs/x", "avdc", None, None)
