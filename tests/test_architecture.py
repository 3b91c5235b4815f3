"""The package's layering, by role: imports point down one list, and nothing reaches up.

    cli/ (entry points)  >  sweeps/  >  report/  >  stages/  >  paper/  >  method  >  world/, runtime/

The method's modules sit at the top level of lt_utils; world/ is the synthetic world; runtime/ the plumbing
(params, run directories, caches, workers); stages/ backs the notebooks; paper/ holds adapters for the
paper-scale path; report/ turns stored runs into tables, claims and figures; sweeps/ run many stage-03
configurations; cli/ holds the command-line entry points, which may import anything and which nothing imports.
Function-level (lazy) imports count: a lazy import is still a dependency, and a cycle through one breaks as
soon as someone hoists it to the top of the file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lt_utils"
# command-line tools outside cli/: nothing imports them either
ENTRY_MODULES = {"lt_utils.report.redraw"}
BELOW = ["init", "runtime", "world", "core", "paper", "stages", "report", "sweeps", "entry"]
ALLOWED = {
    "init": set(),
    "runtime": {"runtime", "init"},
    "world": {"world", "init"},
    "core": {"core", "world", "runtime", "init"},
    "paper": {"core", "world", "runtime", "paper", "init"},
    "stages": {"core", "world", "runtime", "paper", "stages", "init"},
    "report": {"core", "world", "runtime", "paper", "stages", "report", "init"},
    "sweeps": {"core", "world", "runtime", "paper", "stages", "report", "sweeps", "init"},
    "entry": set(BELOW),
}


def modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def layer(mod: str) -> str:
    if mod in ENTRY_MODULES:
        return "entry"
    parts = mod.split(".")
    if len(parts) == 1:
        return "init"
    if len(parts) == 2:
        return "core"
    if parts[1] == "cli":
        return "entry"
    return parts[1] if parts[1] in ALLOWED else "unknown"


def imports_of(name: str, path: Path, is_pkg: bool, mods: dict) -> set[str]:
    """Modules of lt_utils that `name` imports anywhere in its file (absolute or relative, lazy or not)."""
    pkg = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = ".".join(base[:len(base) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:   # `from lt_utils.data import Chunk` -> lt_utils.data
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, is_pkg, mods) for name, (path, is_pkg) in mods.items()}


def test_nothing_imports_an_entry_point():
    importers = [f"{m} imports {d}" for m, deps in sorted(graph().items()) for d in sorted(deps)
                 if layer(d) == "entry" and layer(m) != "entry"]
    assert not importers, importers


def test_every_module_sits_in_a_known_layer():
    unknown = [m for m in modules() if layer(m) == "unknown"]
    assert not unknown, f"modules outside the layers {BELOW}: {unknown}"


def test_the_resolver_sees_relative_and_lazy_imports(tmp_path):
    # the package imports absolutely; the resolver must still see the other spellings a contributor may use
    src = tmp_path / "probe.py"
    src.write_text("from ..runtime.config import require\n"
                   "from .. import em_plan\n"
                   "def f():\n    from . import data_prep\n    import lt_utils.world.units\n")
    found = imports_of("lt_utils.stages.probe", src, False, modules())
    assert found == {"lt_utils.runtime.config", "lt_utils.em_plan", "lt_utils.stages.data_prep",
                     "lt_utils.world.units"}
    g = graph()
    assert "lt_utils.runtime.config" in g["lt_utils.train"]
    assert "lt_utils.world" in g["lt_utils.teacher"]           # `from lt_utils import world`, inside a function


def test_imports_point_down_the_layers():
    bad = [f"{m} ({layer(m)}) imports {d} ({layer(d)})"
           for m, deps in sorted(graph().items()) for d in sorted(deps)
           if layer(d) not in ALLOWED[layer(m)] and not m.startswith(d + ".")]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}   # 1 = on the current path, 2 = done

    def walk(v: str, path: list[str]):
        state[v] = 1
        for w in sorted(g[v]):
            if state.get(w) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(w):] + [v, w]))
            if w not in state:
                walk(w, path + [v])
        state[v] = 2

    for v in sorted(g):
        if v not in state:
            walk(v, [])
