"""Fixtures for the Lua tests (helpers in tests/lua/__init__.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lupa", reason="lupa (pressured[lua]) is not installed")

from pressured.actions.base import ActionContext
from pressured.actions.lua import LuaScripts, ScriptSource
from pressured.storage.local import LocalStorage
from tests.lua import LoopbackServer


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


@pytest.fixture
def make_ctx(storage: LocalStorage) -> Callable[..., ActionContext]:
    def make(
        config: dict[str, Any] | None = None, dry_run: bool = False, with_storage: bool = True
    ) -> ActionContext:
        return ActionContext(
            dry_run=dry_run,
            config=config if config is not None else {"plugins": {"lua": {}}},
            storage_factory=(lambda: storage) if with_storage else None,
        )

    return make


@pytest.fixture
def make_scripts(make_ctx: Callable[..., ActionContext]) -> Iterator[Callable[..., LuaScripts]]:
    """make_scripts(lua_text, **LuaScripts options, ctx=...) -> loaded scripts, closed after."""
    made: list[LuaScripts] = []

    def make(text: str, *, ctx: ActionContext | None = None, **kw: Any) -> LuaScripts:
        scripts = LuaScripts([ScriptSource.inline(text)], ctx=ctx or make_ctx(), **kw)
        made.append(scripts)
        return scripts

    yield make
    for scripts in made:
        scripts.close()
