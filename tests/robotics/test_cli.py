"""The robotics verbs through the `gencond` CLI: a small collection, an evaluation, and bad input."""
import json

import pytest

from gencond.cli import main
from robotics.register import parse_seeds


def test_seed_syntax():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("100-102") == [100, 101, 102]
    assert parse_seeds("1,5") == [1, 5]
    with pytest.raises(ValueError, match="bad --seeds 'x'"):
        parse_seeds("x")


def test_unknown_task_is_one_line_error(capsys, tmp_path):
    code = main(["collect", "--tasks", "dor-open", "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("gencond collect: error: unknown task 'dor-open'; valid tasks:")
    assert "\n" not in err


def test_collect_then_evaluate_oracle(tmp_path, capsys):
    demos, evals = tmp_path / "demos", tmp_path / "eval"
    assert main(["collect", "--tasks", "handle-press", "--cameras", "corner", "--seeds", "1",
                 "--resolution", "64", "--out", str(demos), "--quiet"]) == 0
    assert json.loads((demos / "index.json").read_text())["episodes"][0]["success"]
    assert main(["evaluate-planner", "--planner", "oracle", "--extractor", "avdc", "--tasks", "button-press-topdown",
                 "--cameras", "corner", "--seeds", "1", "--out", str(evals), "--videos", "1", "--quiet"]) == 0
    results = json.loads((evals / "results.json").read_text())
    assert results["overall"] == 100.0 and results["per_task"]["button-press-topdown"]["episodes"] == 1
    assert (evals / "videos" / "button-press-topdown_corner_seed0.gif").exists()
    assert "overall success 100.0%" in capsys.readouterr().out


def test_unknown_planner_and_missing_idm(capsys, tmp_path):
    assert main(["evaluate-planner", "--planner", "dream", "--out", str(tmp_path), "--quiet"]) == 2
    assert "unknown planner 'dream'; valid planners: oracle, oracle-rgbd, repeat-first" in capsys.readouterr().err
    assert main(["evaluate-planner", "--extractor", "idm", "--out", str(tmp_path), "--quiet"]) == 2
    assert "--extractor idm needs --idm RUN_DIR" in capsys.readouterr().err
