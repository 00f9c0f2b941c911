"""The import graph points one way: no cycles among gencond's modules (nor within or between the domains),
the core imports no domain, robotics never imports video. Read from the source (ast), function-level imports
included: a lazy import still ties two modules together."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gencond", "timeseries", "vision", "video", "robotics")
DOMAINS = PACKAGES[1:]
MODULE_PATH = re.compile(r"^([a-z_]+)(\.[a-z_0-9]+)+(:[A-Za-z_0-9]+)?$")  # 'video.planner:VideoPlanner'


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that the file imports (``from pkg import mod`` counts ``pkg.mod`` when it is one)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {_known(m, modules) for m in found if _known(m, modules)} - {name}


def _known(module: str, modules: set[str]):
    """``module`` or its nearest enclosing module that is one of ours (None for a third-party one)."""
    while module and module not in modules:
        module = module.rpartition(".")[0]
    return module or None


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module_name(p) for p in files}
    graph = {_module_name(p): _imports(p, modules) for p in files}
    # importing a package's module imports the package (its __init__) first: not a dependency back
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root, deps in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(deps)))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_core_has_no_import_cycle():
    graph = _graph()
    core = {m: {d for d in deps if d.startswith("gencond")} for m, deps in graph.items() if m.startswith("gencond")}
    assert _cycles(core) == []


def test_the_domains_have_no_import_cycle():
    assert _cycles(_graph()) == []


def test_the_core_imports_no_domain():
    graph = _graph()
    wrong = {m: sorted(d for d in deps if d.split(".")[0] in DOMAINS) for m, deps in graph.items() if m.startswith("gencond")}
    assert {m: d for m, d in wrong.items() if d} == {}


def test_robotics_never_imports_video_not_even_by_name():
    graph = _graph()
    imports = {m: sorted(d for d in deps if d.split(".")[0] == "video") for m, deps in graph.items()
               if m.split(".")[0] == "robotics"}
    assert {m: d for m, d in imports.items() if d} == {}
    named = [(str(p.relative_to(ROOT)), node.value) for p in (ROOT / "robotics").rglob("*.py")
             for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and MODULE_PATH.match(node.value) and node.value.split(".")[0] == "video"]
    assert named == []  # e.g. importlib.import_module("video.planner"): invisible to the graph above


def test_the_graph_reader_sees_relative_lazy_and_named_imports():
    graph = _graph()
    assert "gencond.runs" in graph["gencond.pipeline"]  # from .runs import load_run
    assert "gencond.export" in graph["gencond.runs"]  # a function-level `from .export import ...`
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert MODULE_PATH.match("video.planner:VideoPlanner") and not MODULE_PATH.match("video:RUN_DIR")
