"""The README and the docs say nothing that is not there: every command shown in the README's code blocks
exists (`gencond VERB --help` succeeds, config and script paths exist, make targets are defined), and
every results file a page names exists (with the record it names, for `FILE.jsonl#RUN`)."""
from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "benchmarks" / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def readme_commands() -> list[list[str]]:
    """The shell commands of the README's bash code blocks, split into words (comments and continuations
    joined away)."""
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def gencond_verbs() -> list[str]:
    verbs = []
    for words in readme_commands():
        for i, w in enumerate(words):
            if w == "gencond" and i + 1 < len(words) and words[i + 1] not in verbs:
                verbs.append(words[i + 1])
    return verbs


def test_the_readme_shows_commands():
    verbs = gencond_verbs()
    assert {"train", "forecast", "sample"} <= set(verbs), verbs


@pytest.mark.parametrize("verb", gencond_verbs())
def test_every_gencond_verb_in_the_readme_exists(verb):
    done = subprocess.run([sys.executable, "-m", "gencond", verb, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"gencond {verb} --help: {done.stderr[-500:]}"


def test_every_path_in_the_readme_commands_exists():
    makefile = (ROOT / "Makefile").read_text()
    missing = []
    for words in readme_commands():
        if words[0] == "make":
            missing += [f"make {t}" for t in words[1:] if "=" not in t and not re.search(rf"^{re.escape(t)}:", makefile, re.M)]
        for w in words:
            w = w.split("=", 1)[1] if re.match(r"^[\w.]+=", w) else w
            if re.match(r"^(configs|benchmarks)/\S+\.(yaml|py)$", w) and not (ROOT / w).is_file():
                missing.append(w)
    assert not missing, f"the README's commands name what does not exist: {missing}"


def test_the_readme_s_shipped_models_exist():
    named = sorted(set(re.findall(r"pretrained/[\w.-]+", README.read_text())))
    assert named, "the README names no shipped model"
    if not (ROOT / "pretrained").is_dir():
        pytest.skip("no pretrained/ folder in this checkout yet")
    assert [n for n in named if not (ROOT / n).is_dir()] == []


def expand(pattern: str) -> list[str]:
    """`a{b,c}[_d]*` -> the alternatives of every {..} and [..] (optional) group, globs left in."""
    parts = re.split(r"(\{[^}]*\}|\[[^\]]*\])", pattern)
    options = []
    for part in parts:
        if part.startswith("{"):
            options.append(part[1:-1].split(","))
        elif part.startswith("["):
            options.append(["", part[1:-1]])
        else:
            options.append([part])
    return ["".join(c) for c in itertools.product(*options)]


def test_every_results_file_a_page_names_exists():
    missing = []
    for page in PAGES:
        if not page.is_file():
            continue
        for mention in set(re.findall(r"benchmarks/results/[^\s`'\"()]+", page.read_text())):
            mention = mention.rstrip(".,;:")
            path, _, run = mention.partition("#")
            for p in expand(re.sub(r"<[^>]+>", "*", path)):  # <domain>, <case>: any
                found = sorted(ROOT.glob(p)) or sorted(ROOT.glob(p + ".json"))
                if not found:
                    missing.append(f"{page.relative_to(ROOT)}: {p}")
                elif run:
                    runs = {json.loads(line)["run"] for line in found[0].read_text().splitlines() if line.strip()}
                    missing += [f"{page.relative_to(ROOT)}: {p}#{r}" for r in expand(run)
                                if not any(re.fullmatch(re.sub(r"<[^>]+>", ".+", r).replace("*", ".*"), x) for x in runs)]
    assert not missing, "pages name results that are not there:\n" + "\n".join(sorted(missing))


def test_every_benchmark_script_compiles():
    import py_compile

    scripts = sorted((ROOT / "benchmarks").rglob("*.py"))
    assert len(scripts) > 10
    for script in scripts:
        py_compile.compile(str(script), doraise=True)
