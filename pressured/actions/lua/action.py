"""The ``lua`` action: call every loaded script's ``on_event(event, ctx)``.

Options come from the action entry when it names any (``{type: lua, script: ...}``; the entry is
then complete in itself and errors name ``actions[i].key``), else from ``plugins.lua`` of the
configuration. Both take the same keys: exactly one of ``script``, ``scripts_dir``,
``inline_script``, and ``timeout_ms``, ``memory_mb``, ``env_allow``.

Every handler runs, even after another one failed; each failure is logged (logger
"pressured.lua") with the script name and line. Then ``run`` raises ActionError naming the
failed scripts, so the daemon counts the action as failed. In dry-run mode the scripts still
run, with ``ctx.dry_run = true``; the host then skips storage writes and non-GET requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pressured.actions.base import Action, ActionContext
from pressured.actions.lua.scripts import LuaScripts
from pressured.errors import ActionError, ConfigError
from pressured.model import Event


class LuaAction(Action):
    type: ClassVar[str] = "lua"
    optional: ClassVar[bool] = True  # shed near the daemon's own memory limit

    def __init__(
        self, options: Mapping[str, Any], ctx: ActionContext, where: str = "actions[]"
    ) -> None:
        super().__init__(options, ctx, where)
        section, section_where = self._section()
        self.scripts = LuaScripts.from_config(section, section_where, ctx=ctx)

    def _section(self) -> tuple[Mapping[str, Any], str]:
        own = {k: v for k, v in self.options.items() if k != "type"}
        if own:
            return own, self.where
        plugins = self.ctx.config.get("plugins") or {}
        section = plugins.get("lua") if isinstance(plugins, Mapping) else None
        if not isinstance(section, Mapping) or not section:
            raise ConfigError(
                f"{self.where}: type 'lua' needs a script: set plugins.lua.script, "
                "scripts_dir or inline_script (or give them in the action entry)"
            )
        return section, "plugins.lua"

    def run(self, event: Event) -> None:
        failures = self.scripts.run(event)
        if failures:
            raise ActionError(
                f"lua: {len(failures)} of {len(self.scripts.sources)} handler(s) failed: "
                + "; ".join(str(f) for f in failures)
            )

    def close(self) -> None:
        self.scripts.close()
