"""The shape of the code: one installed import name, no import cycles, small modules, a thin CLI.

The import graph is read from the source with ``ast``, function-local imports included, so a
cycle hidden inside a function still counts.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

# Where each installed package's files live in the repo (pyproject's package-dir mapping).
ROOTS = {"dpo_engine": REPO / "dpo_engine", "dpo_engine.stages": REPO / "stages",
         "dpo_engine.models": REPO / "models", "dpo_engine.tui": REPO / "tui"}


def project_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from pkg import sub`` imports the submodule when there is one.
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_is_read_and_has_no_cycle():
    edges = graph()
    assert "dpo_engine.runner" in edges["dpo_engine.engine"]  # function-local import seen
    assert "dpo_engine.stages.sample" in edges["dpo_engine.pipelines.dpo_reward"]  # relative import seen
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the checker works
    assert cycles(edges) == []


def test_no_module_is_over_500_lines():
    long = {name: n for name, path in project_modules().items()
            if (n := len(path.read_text().splitlines())) > 500}
    assert long == {}


def test_the_cli_calls_the_engine_not_stages_models_or_the_runner():
    edges = graph()
    for name, targets in edges.items():
        if name.startswith("dpo_engine.cli"):
            bad = {t for t in targets if t.startswith(("dpo_engine.stages", "dpo_engine.models",
                                                       "dpo_engine.runner", "dpo_engine.executors"))}
            assert not bad, f"{name} imports {bad}"


def test_the_core_never_imports_the_dashboard_or_the_cli():
    edges = graph()
    for name, targets in edges.items():
        if name.startswith(("dpo_engine.stages", "dpo_engine.models", "dpo_engine.store", "dpo_engine.runner")):
            assert not {t for t in targets if t.startswith(("dpo_engine.tui", "dpo_engine.cli"))}, name


def test_no_code_imports_the_bare_folder_names():
    """``models``, ``stages`` and ``tui`` exist only as dpo_engine.models, .stages and .tui."""
    for path in [*REPO.glob("*/**/*.py"), *REPO.glob("*.py")]:
        parts = path.relative_to(REPO).parts
        if any(part.startswith(".") or part == "build" for part in parts):  # virtualenvs, caches
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for n in names:
                assert n.split(".")[0] not in {"models", "stages", "tui"}, f"{path}: import {n}"


def test_a_users_own_models_stages_and_tui_packages_do_not_shadow_ours(tiny_models, demo_parquet, tmp_path):
    project = tmp_path / "research"
    for name in ("models", "stages", "tui"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(f"raise ImportError('the user\\'s own {name} package')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(project)}
    proc = subprocess.run(
        [sys.executable, "-m", "dpo_engine", "run", "--dataset", str(demo_parquet),
         "--instruct-model", str(tiny_models["instruct"]), "--reward-model", str(tiny_models["reward"]),
         "--work-dir", str(project / "work"), "--sample-k", "2", "--max-new-tokens", "6"],
        cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (project / "work" / "dataset" / "dpo_dataset.parquet").is_file()
    status = subprocess.run([sys.executable, "-m", "dpo_engine", "status", str(project / "work")],
                            cwd=project, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and "logps_reward" in status.stdout
