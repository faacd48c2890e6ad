"""Dependencies point one way: topics ← pipeline ← workers ← replay ← devstack.

Every import of every product module is read with ``ast`` (lazy imports inside functions too), and
an import of a package higher in that order fails the test. A module named ``cli.py`` is a
composition root (docs/architecture.md, "Layout") and may import any layer. ``tests/`` and
``benchmarks/`` sit above every layer: they may import anything and are not walked.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Lowest first: a package may import its own layer and those before it, never one after it.
LAYERS = ("topics", "pipeline", "workers", "replay", "devstack")
RANK = {name: i for i, name in enumerate(LAYERS)}

#: Imports allowed for now, each with the work that removes it. An entry that no longer matches an
#: import (or whose file is gone) fails ``test_every_allowance_is_still_needed``: delete it then.
#: Imports against the order that are known and on their way out (module → imported modules);
#: test_every_allowance_is_still_needed fails once an entry matches no import. None today.
ALLOWED: dict[str, set[str]] = {}


def product_modules() -> Iterator[Path]:
    for layer in LAYERS:
        yield from sorted((ROOT / layer).rglob("*.py"))


def imported_modules(source: str, path: Path) -> Iterator[tuple[int, str]]:
    """``(line, absolute module name)`` for every import in ``source``; relative ones resolved."""
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])
            elif node.module:
                yield node.lineno, node.module


def upward_imports(path: Path, source: str) -> list[str]:
    """Imports in ``path`` that point to a layer above its own, as ``file:line: module``."""
    relative = path.relative_to(ROOT)
    if path.name == "cli.py":
        return []
    own = RANK[relative.parts[0]]
    found = []
    for line, module in imported_modules(source, path):
        top = module.split(".")[0]
        if top in RANK and RANK[top] > own:
            found.append(f"{relative.as_posix()}:{line}: {module}")
    return found


def test_no_module_imports_a_layer_above_its_own() -> None:
    wrong = []
    for path in product_modules():
        allowed = ALLOWED.get(path.relative_to(ROOT).as_posix(), set())
        wrong += [hit for hit in upward_imports(path, path.read_text()) if hit.split(": ")[-1] not in allowed]
    assert not wrong, "imports against the layer order topics ← pipeline ← workers ← replay ← devstack:\n" + (
        "\n".join(wrong)
    )


def test_every_allowance_is_still_needed() -> None:
    stale = []
    for name, modules in ALLOWED.items():
        path = ROOT / name
        hits = upward_imports(path, path.read_text()) if path.exists() else []
        present = {hit.split(": ")[-1] for hit in hits}
        stale += [f"{name}: {module}" for module in sorted(modules - present)]
    assert not stale, "allowed upward imports that no longer exist (remove them from ALLOWED):\n" + (
        "\n".join(stale)
    )


def test_the_walker_finds_upward_imports_lazy_and_relative_ones_too() -> None:
    source = (
        "from topics.schemas import Request\n"
        "import workers.serving\n"
        "def later():\n"
        "    from devstack import stack\n"
        "from .breakers import board\n"
    )
    hits = upward_imports(ROOT / "pipeline/router/example.py", source)
    assert hits == [
        "pipeline/router/example.py:2: workers.serving",
        "pipeline/router/example.py:4: devstack",
    ]
    assert upward_imports(ROOT / "topics/example.py", "from pipeline import kafka\n") == [
        "topics/example.py:1: pipeline"
    ]
    # The composition root may import every layer.
    assert upward_imports(ROOT / "pipeline/cli.py", "import devstack.stack\nimport replay.run\n") == []
