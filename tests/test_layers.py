"""The package's layer order: a module imports (at module level) only from its own layer or below.

Lower layers know nothing of higher ones, so a model, a dataset or the system model can be used
and tested without the simulation, and an algorithm without the round loop:

0. foundations: the state containers, validation helpers, named random streams, topologies,
   compressors;
1. models, the system model, node-mesh sharding helpers;
2. federated data;
3. the local update and its execution strategies, parallelism (pipelines, stages);
4. algorithms, and the evaluation they read;
5. the simulation, its runner, checkpoints, callbacks and results;
6. sweeps, the command line, the package's front door.

Imports inside functions (lazy imports for optional paths) are not checked.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgejax"

# (layer, module prefix); the longest matching prefix decides a module's layer
LAYERS = (
    (0, "edgejax.core.state"), (0, "edgejax.core.validation"), (0, "edgejax.core.streams"),
    (0, "edgejax.network"), (0, "edgejax.compression"),
    (1, "edgejax.models"), (1, "edgejax.system"), (1, "edgejax.parallel.nodes"),
    (2, "edgejax.data"),
    (3, "edgejax.core.local"), (3, "edgejax.core.execution"), (3, "edgejax.core.shared_base"),
    (3, "edgejax.core.memory"), (3, "edgejax.parallel"),
    (4, "edgejax.algorithms"), (4, "edgejax.core.evaluate"),
    (5, "edgejax.core"),
    (6, "edgejax.sweep"), (6, "edgejax.cli"), (6, "edgejax"),
)


def layer_of(module: str) -> int:
    matches = [(len(prefix), layer) for layer, prefix in LAYERS
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(path: Path) -> set[str]:
    """The edgejax modules ``path`` imports at module level (``from edgejax import x`` names
    the submodule ``edgejax.x`` where there is one)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "edgejax":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                where = PACKAGE.parent / Path(*sub.split("."))
                found.add(sub if where.with_suffix(".py").exists() or where.is_dir() else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "edgejax")
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer_and_the_check_sees_imports():
    names = [module_name(p) for p in MODULES]
    assert len(names) > 50 and all(layer_of(n) in range(7) for n in names)
    # the checker reads what it should: the simulation imports the algorithms' protocol
    assert "edgejax.algorithms.base" in module_imports(PACKAGE / "core" / "simulation.py")
    assert layer_of("edgejax.core.simulation") > layer_of("edgejax.algorithms.base")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_module_imports_only_its_layer_or_below(path):
    source = module_name(path)
    upward = sorted(f"{target} (layer {layer_of(target)})" for target in module_imports(path)
                    if layer_of(target) > layer_of(source))
    assert not upward, f"{source} (layer {layer_of(source)}) imports a higher layer: {upward}"
