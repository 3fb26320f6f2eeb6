"""docs/architecture.md stays true: what it names exists, and every room is named."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
NOT_ROOMS = {"__init__.py", "__main__.py", "py.typed", "__pycache__"}


def named_paths() -> set[str]:
    return set(re.findall(r"`(pressured/[\w/.]+?)/?`", DOC.read_text()))


def test_every_module_the_document_names_exists() -> None:
    names = named_paths()
    assert len(names) > 30
    missing = sorted(n for n in names if not (ROOT / n).exists())
    assert missing == [], f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_room_of_the_package_is_named() -> None:
    named = {n.split("/")[1] for n in named_paths()}
    rooms = {
        p.name
        for p in (ROOT / "pressured").iterdir()
        if p.name not in NOT_ROOMS
        and not p.name.startswith("_")
        and p.suffix != ".so"
        and (p.is_dir() or p.suffix == ".py")
    }
    unnamed = sorted(rooms - named)
    assert unnamed == [], f"pressured/ has rooms docs/architecture.md does not name: {unnamed}"
