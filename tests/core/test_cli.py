import pytest

from gencond import cli
from gencond.registry import TASK_VERBS, register_task_verb


@pytest.fixture
def toy_sample_verb():
    seen = {}

    def add_arguments(p):
        p.add_argument("--count", type=int, default=1)

    def run(args):
        seen.update(vars(args))

    register_task_verb("toy-task", "sample", "toy", add_arguments, run)
    yield seen
    TASK_VERBS.pop(("toy-task", "sample"))


def test_shared_verb_dispatches_to_the_runs_task(tmp_path, toy_sample_verb):
    (tmp_path / "config.yaml").write_text("task: toy-task\n")
    assert cli.main(["sample", str(tmp_path), "--count", "3"]) == 0
    assert toy_sample_verb == {"count": 3, "run_dir": str(tmp_path), "verb": "sample"}


def test_shared_verb_errors_are_one_line(tmp_path, toy_sample_verb, capsys):
    assert cli.main(["sample", str(tmp_path / "nowhere")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("task: toy-task\n")
    assert cli.main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gencond eval: error: task 'toy-task' has no 'eval' command") and "\n" not in err


def test_unknown_shared_verb_is_refused():
    with pytest.raises(ValueError, match="unknown shared verb"):
        register_task_verb("toy-task", "plot", "", lambda p: None, lambda a: None)


def test_help_imports_no_heavy_library():
    """`gencond --help` lists every domain's verbs without importing torch (it answers in well under a second)."""
    import subprocess
    import sys

    code = ("import sys; from gencond.cli import build_parser; p = build_parser(); "
            "print(sorted(m for m in ('torch', 'pandas', 'gluonts', 'mujoco', 'diffusers') if m in sys.modules)); "
            "print(sorted(p._subparsers._group_actions[0].choices))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[]"
    assert {"train", "forecast", "collect", "evaluate-planner"} <= set(eval(out[1]))


def test_gencond_sets_a_passive_openmp_wait_policy_before_torch_loads():
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, gencond, torch; print(os.environ['OMP_WAIT_POLICY'])"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the user's choice is kept
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "ACTIVE"
