"""One script's interpreter, in the Lua worker (the package docstring says what a script sees).

Each script gets a Sandbox: its own lupa LuaRuntime (Lua 5.4), in which prelude.lua builds the
script's environment from the host functions (host_*.py), within the script's budget
(budget.py). require() finds Lua files beside the script. A failing call (error, timeout,
memory) is a ScriptFailure naming the script and line; the interpreter stays usable.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, cast, get_args

from pressured.actions.lua.budget import HOOK_INSTRUCTIONS, MIB, Budget
from pressured.actions.lua.convert import Converter, as_text, clip, estimate
from pressured.actions.lua.host import Host, HostAnswer, Owner, ScriptMistake
from pressured.actions.lua.host_ctx import CtxApi
from pressured.actions.lua.host_http import HttpApi
from pressured.actions.lua.host_storage import StorageApi
from pressured.errors import LuaError

_OUT_OF_MEMORY = "not enough memory"
_POSITION = re.compile(r"^(?P<file>[^\n]+?):(?P<line>\d+): (?P<rest>.*)$", re.DOTALL)
"""The "<chunk>:<line>: " prefix Lua puts on error messages."""
_POSITION_CHARS = 1024
"""The prefix looked at for that position (Lua shortens chunk names in messages to 60 bytes)."""
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class ScriptSource:
    """One script: ``name`` is what logs and errors show (the file path or "inline_script")."""

    name: str
    text: str
    chunkname: str
    """Lua chunk name: "@<path>" for files, "=inline_script" for inline text."""
    module_dir: str | None
    """Where require() finds Lua files; None for inline text."""

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ScriptSource:
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        return cls(name=str(p), text=text, chunkname=f"@{p}", module_dir=str(p.parent))

    @classmethod
    def inline(cls, text: str, name: str = "inline_script") -> ScriptSource:
        return cls(name=name, text=text, chunkname=f"={name}", module_dir=None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScriptSource:
        module_dir = data.get("module_dir")
        return cls(
            name=str(data["name"]),
            text=str(data["text"]),
            chunkname=str(data["chunkname"]),
            module_dir=None if module_dir is None else str(module_dir),
        )


FailureKind = Literal["error", "timeout", "memory", "crashed"]


@dataclass(frozen=True)
class ScriptFailure:
    """One handler that did not finish: ``kind`` is "error", "timeout" (the script's time was
    up: stopped by its budget, or its worker killed), "memory", or "crashed" (its worker died)."""

    script: str
    message: str
    kind: FailureKind = "error"
    line: int | None = None
    file: str | None = None
    """The file ``line`` is in: the script itself, or a module it required."""

    def __post_init__(self) -> None:
        # a script's error value can be megabytes: only a prefix is ever quoted
        object.__setattr__(self, "message", clip(self.message))
        if self.file is not None:
            object.__setattr__(self, "file", clip(self.file))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, script: str) -> ScriptFailure:
        """The failure the worker described, every field checked (``script`` is the script the
        daemon asked about)."""
        if not isinstance(data, Mapping):
            return cls(script, f"the Lua worker answered {str(data)[:200]!r}")
        kind = data.get("kind")
        line = data.get("line")
        file = data.get("file")
        return cls(
            script=script,
            message=str(data.get("message", "failed")),
            kind=cast(FailureKind, kind) if kind in get_args(FailureKind) else "error",
            line=line if isinstance(line, int) and not isinstance(line, bool) else None,
            file=None if file is None else str(file),
        )

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.script}: {self.message}"
        if self.file is not None and self.file != self.script:
            return f"{self.script}: {self.file}:{self.line}: {self.message}"
        return f"{self.script}:{self.line}: {self.message}"


def bundled_script(name: str = "heapdump.lua") -> Path:
    """Path of a script shipped with pressured (pressured/scripts/<name>)."""
    path = Path(str(resources.files("pressured") / "scripts" / name))
    if not path.is_file():
        raise LuaError(f"no bundled Lua script {name!r} (looked in {path.parent})")
    return path


def load_lupa() -> ModuleType:
    # Lua 5.4 on purpose: the default lupa module may be LuaJIT (no allocator limit on 64-bit)
    # or a newer Lua whose language changed; 5.4 is what the scripts and the prelude target.
    try:
        from lupa import lua54  # noqa: PLC0415 - heavy, optional dependency
    except ImportError as exc:
        raise LuaError(
            "Lua actions need lupa >= 2.0 with Lua 5.4 (pip install 'pressured[lua]')"
        ) from exc
    module: ModuleType = lua54
    return module


@functools.cache
def _prelude() -> bytes:
    """The Lua text of prelude.lua (package data). It runs once per interpreter with the full
    standard library, keeps what the host needs in locals, builds the script's environment and
    then strips the globals. Scripts never see _G, debug or any Python object: every host
    function is wrapped in a Lua closure."""
    return (resources.files("pressured.actions.lua") / "prelude.lua").read_bytes()


class Sandbox:
    """One script's interpreter: set up with the prelude and the script's top level run at
    start (a failure is a LuaError), then one ``run`` per event."""

    def __init__(self, source: ScriptSource, owner: Owner) -> None:
        lupa = load_lupa()
        self.source = source
        self.owner = owner
        try:
            self._start(source, lupa)
        except Exception as exc:  # lupa's errors: the sandbox itself could not be set up
            raise LuaError(f"{source.name}: cannot set up the Lua sandbox: {exc}") from exc
        self.budget.settle()
        failure = self._outcome(self._load_result)
        if failure is not None:
            raise LuaError(str(failure))

    def _start(self, source: ScriptSource, lupa: ModuleType) -> None:
        self.lua = lupa.LuaRuntime(
            encoding=None,
            unpack_returned_tuples=True,
            register_eval=False,
            register_builtins=False,
            attribute_filter=_refuse_attribute,
            max_memory=self.owner.memory_mb * MIB,
        )
        self.budget = Budget(self.lua, source.name, self.owner.timeout_ms, self.owner.memory_mb)
        self.convert = Converter(self.lua, lupa.lua_type)
        self.host = Host(source.name, self.owner, self.budget, self.convert)
        ctx_api = CtxApi(self.host)
        self.storage = StorageApi(self.host)
        py = self.convert.table(
            {
                "expired": self.budget.expired,
                "settle": self.budget.settle,
                **ctx_api.functions(),
                "find_module": self._find_module,
                **HttpApi(self.host).functions(),
                **self.storage.functions(),
            },
            raw=True,
        )
        with self.budget.entry():
            self.api = self.lua.execute(
                _prelude(),
                py,
                self.budget.timeout_message.encode(),
                HOOK_INSTRUCTIONS,
                name="pressured",
                mode="t",
            )
            self.budget.reserve(estimate(self.owner.config))
            self.api.set_config(self.convert.to_lua(self.owner.config))
            text = source.text.encode()
            self.budget.reserve(len(text))
            self._load_result = self.api.load(text, source.chunkname.encode())

    def run(self, event_json: Mapping[str, Any], ctx: Mapping[str, Any]) -> ScriptFailure | None:
        try:
            with self.budget.entry():
                self.budget.reserve(estimate(event_json) + estimate(ctx))
                result = self.api.run(self.convert.to_lua(event_json), self.convert.to_lua(ctx))
        except Exception as exc:  # a lupa error outside the protected call (memory while pushing)
            result = (False, f"{type(exc).__name__}: {exc}")
        finally:
            self.storage.close_leftovers()
            self.budget.settle()
            self.lua.gccollect()
        return self._outcome(result)

    def _outcome(self, result: Any) -> ScriptFailure | None:
        values = result if isinstance(result, tuple) else (result,)
        if values and values[0] is True:
            return None
        message = as_text(values[1]) if len(values) > 1 else "failed"
        line = values[2] if len(values) > 2 and isinstance(values[2], int) else None
        src = as_text(values[3]) if len(values) > 3 and values[3] is not None else None
        timed_out = len(values) > 4 and values[4] is True
        kind: FailureKind = "error"
        if timed_out or message == self.budget.timeout_message:
            kind = "timeout"
        elif message == _OUT_OF_MEMORY or message.endswith(_OUT_OF_MEMORY):
            kind = "memory"
            message = f"{_OUT_OF_MEMORY} (memory_mb={self.budget.memory_mb})"
        file = src[1:] if src and src[:1] in ("@", "=") else src
        # The position Lua wrote into the message is where the error was raised; the message
        # handler sees where it surfaced (a rethrow by pcall, http.stream or require).
        at = _POSITION.match(message[:_POSITION_CHARS])
        if at:
            file, line = at.group("file"), int(at.group("line"))
            message = at.group("rest") + message[_POSITION_CHARS:]
            if file.startswith("...") and self.source.name.endswith(file[3:]):
                file = self.source.name  # Lua shortens long chunk names to "...<tail>"
        elif file == self.source.chunkname[1:]:
            file = self.source.name
        return ScriptFailure(
            script=self.source.name, message=message, kind=kind, line=line, file=file
        )

    def close(self) -> None:
        self.storage.close_leftovers()

    def _find_module(self, name: Any) -> HostAnswer:
        """require()'s host side: the text and path of a Lua file beside the script."""

        def find() -> HostAnswer:
            modname = as_text(name)
            if not _MODULE_NAME.match(modname):
                raise ScriptMistake(f"require({modname!r}): not a module name")
            if self.source.module_dir is None:
                raise ScriptMistake(
                    f"require({modname!r}): module not found: an inline script can require "
                    "only string, table, math, utf8, coroutine and os; C modules are not "
                    "available in the Lua sandbox"
                )
            path = Path(self.source.module_dir, *modname.split(".")).with_suffix(".lua")
            if not path.is_file():
                raise ScriptMistake(
                    f"require({modname!r}): module not found ({path} does not exist): the "
                    "sandbox loads only Lua files beside the script; C modules are not "
                    "available in the Lua sandbox"
                )
            data = path.read_bytes()
            self.budget.reserve(len(data) + len(str(path)))
            return (True, data, str(path).encode())

        return self.host.guard(find)


def _refuse_attribute(obj: object, name: object, is_setting: bool) -> str:
    raise AttributeError("pressured: Python objects are not accessible from Lua")
