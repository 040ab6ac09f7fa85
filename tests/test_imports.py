"""The stage package's imports run one way (#29): every ``import`` of the package by the package,
at the top of a module or inside a function, read from the source; a circle fails and is named."""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "workflow" / "proxyattention"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a ``from . import x`` of a module counts as x)."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph = {m: set() for m in modules}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    if target in modules and target != name:
                        graph[name].add(target)
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules and a.name != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), as a sorted list."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_s_imports_have_no_circle():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the subpackages' modules
    assert circles(graph) == []


def test_the_walk_sees_a_circle_through_an_import_inside_a_function(tmp_path):
    """The check itself: a circle closed only by a function-level relative import is found."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    (package / "c.py").write_text("from . import a\n")
    assert circles(import_graph(package)) == [["pkg.a", "pkg.sub.b"]]


def test_helpers_never_import_a_stage_and_the_bottom_of_settings_imports_nothing_of_the_package():
    """The layers the README's layout table names: stages are recipes on top of the helpers; the
    config's schema is the bottom of settings; each source kind imports only the sources' base."""
    graph = import_graph()
    helpers = [m for m in graph if "." in m and m.split(".")[1] not in ("stages", "cli", "__main__")]
    assert {m: sorted(t for t in graph[m] if ".stages" in t) for m in helpers if any(".stages" in t for t in graph[m])} == {}
    assert graph["proxyattention.settings.schema"] == set()
    for kind in ("folder", "table", "idx", "torchvision"):
        sources = {t for t in graph[f"proxyattention.sources.{kind}"] if t.startswith("proxyattention.sources")}
        assert sources <= {"proxyattention.sources.base"}, kind
    stages = {m.rpartition(".")[2] for m in graph if m.startswith("proxyattention.stages.")}
    assert stages == {"prepare", "prepare_masks", "train", "find_misclassified", "compute_cams", "mask_and_save",
                      "evaluate", "decide_cycle", "aggregate", "figures", "faithfulness", "layer_pilot",
                      "from_record", "agreement"}
