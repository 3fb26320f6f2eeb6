"""What a hostile tenant (or a script that met one) must not do to the daemon: flood its log
with a huge error."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pressured.actions.base import ActionContext
from pressured.actions.lua import LuaAction
from pressured.errors import ActionError
from tests.lua import pressure

MakeAction = Callable[..., LuaAction]
BIG = 20 * 1024 * 1024


@pytest.fixture
def make_action(make_ctx: Callable[..., ActionContext]) -> Iterator[MakeAction]:
    """make_action(lua_text, **plugins.lua options) -> a lua action, closed after."""
    made: list[LuaAction] = []

    def make(text: str, ctx: ActionContext | None = None, **options: Any) -> LuaAction:
        action = LuaAction({"type": "lua", "inline_script": text, **options}, ctx or make_ctx())
        made.append(action)
        return action

    yield make
    for action in made:
        action.close()


# -- huge errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raise_it", "huge"),
    [
        (f'error(string.rep("x", {BIG}))', "message"),
        (
            f'error(setmetatable({{}}, {{__tostring = function() return ("x"):rep({BIG}) end}}))',
            "message",
        ),
        (f'load("error(\'boom\', 0)", "=" .. string.rep("c", {BIG}))()', "file"),
    ],
    ids=["string", "tostring", "chunk name"],
)
def test_a_huge_lua_error_is_quoted_by_a_short_prefix(
    raise_it: str, huge: str, make_action: MakeAction, caplog: pytest.LogCaptureFixture
) -> None:
    action = make_action(f"function on_event(event, ctx)\n  {raise_it}\nend\n", memory_mb=128)
    [failure] = action.scripts.run(pressure())
    clipped = getattr(failure, huge)
    assert clipped.endswith(f"... ({BIG} bytes)"), clipped[-100:]
    assert len(clipped) < 250
    assert len(str(failure)) < 600
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged == [str(failure)]
    with pytest.raises(ActionError) as err:
        action.run(pressure())
    assert len(str(err.value)) < 700
