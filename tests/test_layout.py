"""The package's shape: no import cycles, no reaching into another module's private names, and every module
importable from a real (non-editable) install.

The import graph is read from the source, following pyproject's ``package-dir`` map (the top-level ``export/``,
``engines/``, ``runtime/`` and ``benchmarks/`` folders are subpackages of ``personalive_trt``), which generic
tools cannot. Every import statement counts: module level, inside functions and under ``TYPE_CHECKING``.
Importing ``a.b`` (``import a.b``, ``from a.b import c``, ``from a import b`` where ``b`` is a module) is an
edge to ``a.b`` alone, not to ``a``'s ``__init__``: an ``__init__`` that re-exports is not a cycle of its
package's modules.
"""
from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def package_modules(root: Path = REPO) -> dict[str, Path]:
    """Module name -> source file, for every package of pyproject's map."""
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = setup["package-dir"]
    modules = {}
    for package in setup["packages"]:
        for path in sorted((root / folders.get(package, package.replace(".", "/"))).glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def import_graph(root: Path = REPO) -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """(module -> modules it imports, [(importer, module, private name)] for ``from module import _name``)."""
    modules = package_modules(root)
    graph: dict[str, set[str]] = {}
    private: list[tuple[str, str, str]] = []
    for name, path in modules.items():
        package = name if path.stem == "__init__" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the importer's package, one level up per extra dot
                    parts = package.split(".")
                    target = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    target = node.module
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules:
                        imported.add(f"{target}.{alias.name}")
                    elif target in modules:
                        imported.add(target)
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            private.append((name, target, alias.name))
        imported.discard(name)
        graph[name] = imported
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_graph_follows_the_package_dir_map():
    """The walk sees the mapped folders and resolves relative imports (else the checks below prove nothing)."""
    graph, _ = import_graph()
    assert "personalive_trt.export.onnx_export" in graph and "personalive_trt.runtime.stream" in graph
    assert "personalive_trt.export.fp16" in graph["personalive_trt.export.onnx_export"]  # `from . import fp16`


def test_no_import_cycles():
    graph, _ = import_graph()
    assert cycles(graph) == []


#: The stages, lowest first (STYLE: media -> models -> export -> engines -> runtime -> live/web -> cli); a module
#: may import its own floor and the floors below. The package root re-exports the runtime's API.
FLOORS = {
    "personalive_trt.old_paths": 0, "personalive_trt.choices": 0, "personalive_trt.config": 0,
    "personalive_trt.shapes": 0, "personalive_trt.devices": 0, "personalive_trt.configs": 0,
    "personalive_trt.media": 1, "personalive_trt.models": 2, "personalive_trt.export": 3,
    "personalive_trt.engines": 4, "personalive_trt.runtime": 5, "personalive_trt": 5,
    "personalive_trt.build": 6, "personalive_trt.filemode": 6, "personalive_trt.live": 6, "personalive_trt.web": 6,
    "personalive_trt.bench": 6, "personalive_trt.cli": 7,
}
#: Entry points that run a command of a higher floor, and why.
UPWARD = {("personalive_trt.bench.bench_stream", "personalive_trt.cli.bench"):
          "the script `python benchmarks/bench_stream.py` runs the `bench` command"}


def floor(module: str) -> int:
    while module not in FLOORS:
        module = module.rpartition(".")[0]  # a KeyError for a module outside every room: add it to FLOORS
    return FLOORS[module]


def test_imports_point_down_the_stages():
    graph, _ = import_graph()
    upward = sorted((module, other) for module, imported in graph.items() for other in imported
                    if floor(other) > floor(module) and (module, other) not in UPWARD)
    assert upward == [], "imports up the stages (move the shared piece down a floor): " + ", ".join(
        f"{module} -> {other}" for module, other in upward)

def test_no_module_imports_another_modules_private_names():
    _, private = import_graph()
    assert private == [], "import the public name (or make it public where it is defined): " + ", ".join(
        f"{importer} imports {module}.{name}" for importer, module, name in private)


@pytest.mark.parametrize("old, name, new", [
    ("personalive_trt.pipeline", "Animator", "personalive_trt.runtime.reference_loop"),
    ("personalive_trt.runtime", "StreamRuntime", "personalive_trt.runtime.stream"),
    ("personalive_trt.animate", "open_animator", "personalive_trt.runtime.animator"),
    ("personalive_trt.build", "load_networks", "personalive_trt.engines.folder"),
    ("personalive_trt.build", "build", "personalive_trt.build.driver"),
    ("personalive_trt.networks", "Networks", "personalive_trt.engines.networks"),
    ("personalive_trt.weights", "load_models", "personalive_trt.models.weights"),
])
def test_old_import_paths_keep_working(old, name, new):
    """The paths users and scripts used before the restructuring give the same objects as the new ones."""
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_a_name_that_left_an_old_module_fails_in_one_line_naming_the_new_home():
    with pytest.raises(ImportError) as caught:
        from personalive_trt.animate import no_such_name  # noqa: F401
    assert str(caught.value).count("\n") == 0 and "personalive_trt.filemode" in str(caught.value), caught.value


def test_every_module_imports_from_a_non_editable_install(tmp_path):
    """pyproject's package map ships every module and its data: a real install (``pip install --target``, no
    dependencies, no index) imports each module of the map from the installed copy, not from this checkout."""
    pytest.importorskip("setuptools", minversion="77")
    source = tmp_path / "source"
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, source / name)
    for folder in sorted(set(setup["package-dir"].values())):
        shutil.copytree(REPO / folder, source / folder, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "results", "*.md"))
    target = tmp_path / "installed"
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--no-index", "--target", str(target), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    modules = sorted(name for name in package_modules() if not name.endswith("__main__"))
    child = textwrap.dedent(f"""
        import importlib, pathlib, sys
        target = pathlib.Path({str(target)!r})
        outside = []
        for name in {modules!r}:
            module = importlib.import_module(name)
            if target not in pathlib.Path(module.__file__).resolve().parents:
                outside.append(f"{{name}}: {{module.__file__}}")
        from personalive_trt.media.sample import sample_driving, sample_reference
        from personalive_trt.configs import config_path
        from personalive_trt.bench.flops import DEFAULT_FLOPS_JSON
        data = [sample_reference(), sample_driving(), config_path("unet3d.yaml"), DEFAULT_FLOPS_JSON,
                pathlib.Path(importlib.import_module("personalive_trt.web.routes").STATIC_DIR) / "index.html"]
        missing = [str(p) for p in data if not pathlib.Path(p).is_file() or target not in pathlib.Path(p).parents]
        assert not outside and not missing, (outside, missing)
        print("IMPORTED", len({modules!r}))
    """)
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["IMPORTED", str(len(modules))]
