"""The package layers, drawn from the imports of every module: tools -> benchmarks -> engine ->
models, datasets -> op, and nothing pointing back up. Inside the engine, its rooms: training and
inference -> evaluation -> processes (the engine's top-level modules, its door, are open to every room).

Each module's ``import`` statements (top level and inside functions) are read with ``ast``, so a
layer cannot hide an upward import behind a lazy import.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# where each installed package lives in the checkout (setup.cfg package_dir)
PACKAGE_DIRS = {"softpool3d": ROOT / "softpool3d", "softpool3d.models": ROOT / "models",
                "softpool3d.datasets": ROOT / "datasets"}
OP = {"softpool3d", "softpool3d.ops", "softpool3d.extension", "softpool3d.exportable", "softpool3d.replace",
      "softpool3d.startup"}
# which layers each layer may import (besides the standard library and third-party packages)
ALLOWED = {
    "op": {"op"},
    "models": {"op", "models"},
    "datasets": {"op", "datasets"},
    "engine": {"op", "models", "datasets", "engine"},
    "benchmarks": {"op", "models", "datasets", "engine", "benchmarks"},
}


ROOMS = {
    "processes": {"processes"},
    "evaluation": {"evaluation", "processes"},
    "inference": {"inference", "evaluation", "processes"},
    "training": {"training", "evaluation", "processes"},
}
"""Which rooms of ``softpool3d.engine`` the modules of each room may import."""


def room_of(module: str) -> str | None:
    """The engine room (``softpool3d.engine.<room>....``) of ``module``, or ``None`` outside the rooms."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["softpool3d", "engine"] and len(parts) > 2 and parts[2] in ROOMS else None


def room_problems(module: str, path: Path) -> list[str]:
    """``path:line: module (room) imports target (room)`` for every import of another engine room that
    ``module``'s room may not make."""
    room = room_of(module)
    if room is None:
        return []
    return [f"{path}:{line}: {module} ({room}) imports {target} ({room_of(target)})"
            for line, target in imports_of(module, path)
            if room_of(target) is not None and room_of(target) not in ROOMS[room]]


def layer_of(module: str) -> str | None:
    """The layer of a ``softpool3d`` module, or ``None`` for a module outside the project."""
    if module in OP:
        return "op"
    parts = module.split(".")
    if parts[0] != "softpool3d":
        return None
    if len(parts) > 1 and parts[1] in ("models", "datasets", "engine", "benchmarks"):
        return parts[1]
    raise AssertionError(f"{module} is in no layer: add it to OP or to a subpackage")


def project_modules() -> dict[str, Path]:
    """Every module of the installed packages, by dotted name."""
    modules = {}
    for package, directory in PACKAGE_DIRS.items():
        for path in sorted(directory.rglob("*.py")):
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            modules[name] = path
    return modules


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            # ``from softpool3d import engine`` imports the submodule, not a name of the op
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                      if base == "softpool3d" and alias.name in ("engine", "models", "datasets", "benchmarks")]
    return found


def upward_imports(module: str, path: Path) -> list[str]:
    """``path:line: module (layer) imports target (layer)`` for every import of ``module`` (source
    ``path``) that its layer may not make."""
    layer = layer_of(module)
    problems = []
    for line, target in imports_of(module, path):
        target_layer = layer_of(target)
        if target_layer is None:
            top = target.split(".")[0]
            if layer == "op" and top != "torch" and top not in sys.stdlib_module_names:
                problems.append(f"{path}:{line}: {module} (op) imports {target}: the op imports only torch")
        elif target_layer not in ALLOWED[layer]:
            problems.append(f"{path}:{line}: {module} ({layer}) imports {target} ({target_layer})")
    return problems


def test_every_module_sits_in_a_layer():
    modules = project_modules()
    assert {"softpool3d", "softpool3d.ops", "softpool3d.engine.training.train", "softpool3d.models.registry",
            "softpool3d.datasets.clip_dataset"} <= set(modules)
    assert {layer_of(module) for module in modules} == set(ALLOWED)


def test_no_import_points_up():
    assert [problem for module, path in project_modules().items() for problem in upward_imports(module, path)] == []


def test_engine_rooms_import_only_the_rooms_below_them():
    modules = project_modules()
    assert {room_of(module) for module in modules} == {None, *ROOMS}
    assert [problem for module, path in modules.items() for problem in room_problems(module, path)] == []


@pytest.mark.parametrize("module, source, target", [
    ("softpool3d.engine.processes.loaders", "from softpool3d.engine.training.train import train\n", "training"),
    ("softpool3d.engine.evaluation.evaluate", "def f():\n    from softpool3d.engine.inference import predict\n",
     "inference"),
    ("softpool3d.engine.inference.predict", "from softpool3d.engine.training.switches import ema\n", "training"),
])
def test_an_import_of_a_room_above_is_caught(tmp_path, module, source, target):
    path = tmp_path / "module.py"
    path.write_text("from softpool3d.engine import builders\nfrom softpool3d.engine.processes import amp\n" + source)
    problems = room_problems(module, path)
    assert len(problems) == 1 and problems[0].endswith(f"({target})"), problems


def tool_imports_problems(path: Path) -> list[str]:
    """``path:line: ...`` for every import of the entry script ``path`` that is neither the standard
    library nor the ``softpool3d`` package: another tool (by its module name, as ``tools/`` is the
    script's ``sys.path[0]``, or through ``tools``) or any other library."""
    tools = {script.stem for script in path.parent.glob("*.py")} | {"tools"}
    problems = []
    for line, target in imports_of(f"tools.{path.stem}", path):
        top = target.split(".")[0]
        if top in tools:
            problems.append(f"{path}:{line}: imports {target}, another tool: tools import the package only")
        elif top != "softpool3d" and top not in sys.stdlib_module_names:
            problems.append(f"{path}:{line}: imports {target}: tools import the package only, which imports the rest")
    return problems


def test_tools_are_entry_scripts_above_every_layer():
    """No package module imports ``tools``; the scripts import the package (and the standard library),
    never each other nor another library."""
    modules = project_modules()
    for module, path in modules.items():
        assert all(target.split(".")[0] != "tools" for _, target in imports_of(module, path)), path
    scripts = sorted((ROOT / "tools").glob("*.py"))
    assert {"train", "test", "prepare_videos"} <= {script.stem for script in scripts}
    assert [problem for script in scripts for problem in tool_imports_problems(script)] == []


@pytest.mark.parametrize("source, target", [
    ("import train\n", "train"),
    ("from bench_models import main\n", "bench_models"),
    ("from tools.test import main\n", "tools.test"),
    ("from . import train\n", "tools"),
    ("import torch\n", "torch"),
])
def test_a_tool_importing_another_tool_or_library_is_caught(tmp_path, source, target):
    for name in ("train", "bench_models", "test"):
        (tmp_path / f"{name}.py").write_text("")
    path = tmp_path / "tool.py"
    path.write_text("import sys\n\nfrom softpool3d.engine.cli import train_main\n" + source)
    problems = tool_imports_problems(path)
    assert len(problems) == 1 and f":4: imports {target}" in problems[0], problems


@pytest.mark.parametrize("layer, source, target, line", [
    ("models", "from softpool3d.engine.config import load_config\n", "softpool3d.engine.config", 2),
    ("datasets", "def f():\n    from softpool3d.models import build_model\n", "softpool3d.models", 3),
    ("datasets", "from softpool3d import engine\n", "softpool3d.engine", 2),
    ("datasets", "from ..engine import train\n", "softpool3d.engine", 2),
    ("op", "import numpy\n", "numpy", 2),
    ("op", "from softpool3d.models import pooling\n", "softpool3d.models", 2),
    ("engine", "from softpool3d.benchmarks import op\n", "softpool3d.benchmarks", 2),
])
def test_an_upward_import_is_caught(tmp_path, layer, source, target, line):
    """The check fails for each kind of upward import, at the line that makes it."""
    module = {"op": "softpool3d.ops", "models": "softpool3d.models.pooling",
              "datasets": "softpool3d.datasets.sampling", "engine": "softpool3d.engine.training.train"}[layer]
    path = tmp_path / "module.py"
    path.write_text("import torch\n" + source)
    problems = upward_imports(module, path)
    assert len(problems) == 1 and f"imports {target}" in problems[0] and f":{line}:" in problems[0], problems
