"""The README's Layout is checked against the tree: what it names exists, and nothing is left out."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "topics", "workers", "replay", "devstack")
#: Packages whose modules the Layout lists one by one (the others are described by what they hold).
ENUMERATED = ("pipeline", "workers")


def layout() -> dict[str, str]:
    """Each entry of the Layout block (``pipeline/``, ``pipeline/router/``, ``compose.yaml``) → its text."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Layout") :].split("```")[1]
    entries: dict[str, str] = {}
    top = current = ""
    for line in block.splitlines():
        if match := re.match(r"^(\S+)\s{2,}(.*)$", line):
            top = current = match[1]
            entries[current] = match[2]
        elif match := re.match(r"^  (\S+/)\s+(.*)$", line):
            current = top + match[1]
            entries[current] = match[2]
        elif line.strip() and current:
            entries[current] += " " + line.strip()
    return entries


def test_every_entry_of_the_layout_exists() -> None:
    missing = [name for name in layout() if not (ROOT / name).exists()]
    assert not missing, missing


def test_every_module_the_layout_names_exists_where_it_says() -> None:
    missing = []
    for entry, text in layout().items():
        if entry.endswith("/"):
            for module in re.findall(r"\b(\w+\.py)\b", text):
                if not (ROOT / entry / module).is_file():
                    missing.append(entry + module)
    assert not missing, missing


def test_every_subpackage_is_in_the_layout() -> None:
    entries = layout()
    left_out = []
    for package in PACKAGES:
        for sub in sorted(p.parent for p in (ROOT / package).glob("*/__init__.py")):
            name = f"{package}/{sub.name}/"
            if name not in entries and f"{sub.name}/" not in entries.get(f"{package}/", ""):
                left_out.append(name)
    assert not left_out, left_out


def test_every_module_of_the_enumerated_packages_is_in_the_layout() -> None:
    entries = layout()
    left_out = []
    for package in ENUMERATED:
        text = entries[f"{package}/"]
        for module in sorted((ROOT / package).glob("*.py")):
            if module.name != "__init__.py" and not re.search(rf"\b{re.escape(module.name)}\b", text):
                left_out.append(f"{package}/{module.name}")
    assert not left_out, left_out
