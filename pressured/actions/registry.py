"""Action plugins: found through the versioned entry-point group, validated before the daemon
runs (a bad option fails at start, not at the first event), a broken plugin skipped with a
warning naming it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import entry_points

from pressured.actions.base import Action, ActionContext
from pressured.config import Config
from pressured.errors import ConfigError, did_you_mean

log = logging.getLogger("pressured.actions")

ACTION_GROUP = "pressured.actions.v1"


def action_names() -> set[str]:
    """Every installed action type, read from the entry points without importing any."""
    return {ep.name for ep in entry_points(group=ACTION_GROUP)}


def load_action_classes(names: Iterable[str] | None = None) -> dict[str, type[Action]]:
    """Action classes by type name (only ``names`` when given: an action not configured is
    never imported, nor the libraries it needs); a plugin that fails to import is skipped
    with a warning."""
    wanted = None if names is None else set(names)
    out: dict[str, type[Action]] = {}
    for ep in entry_points(group=ACTION_GROUP):
        if wanted is not None and ep.name not in wanted:
            continue
        try:
            cls = ep.load()
        except Exception as exc:
            log.warning(
                "action plugin %r (%s) cannot be loaded, skipped: %s", ep.name, ep.value, exc
            )
            continue
        if not (isinstance(cls, type) and issubclass(cls, Action)):
            log.warning(
                "action plugin %r (%s) is not an Action subclass, skipped", ep.name, ep.value
            )
            continue
        out[ep.name] = cls
    return out


def build_actions(cfg: Config, ctx: ActionContext) -> list[Action]:
    """Validate and build every configured action, in the configured order: the runner puts
    each into its lane (actions/runner.py), and the slow actions configured after heapdump run
    in its lane, after it, and report the pprof_top it added. All problems come back in one
    ConfigError."""
    classes = load_action_classes(str(entry.get("type")) for entry in cfg.actions)
    known = action_names()
    actions: list[Action] = []
    problems: list[str] = []
    for i, entry in enumerate(cfg.actions):
        where = f"actions[{i}]"
        kind = entry.get("type")
        cls = classes.get(str(kind))
        if cls is None and kind in known:
            problems.append(f"{where}.type: action plugin {kind!r} cannot be loaded (logged)")
            continue
        if cls is None:
            problems.append(
                f"{where}.type: unknown action {kind!r}; known: {', '.join(sorted(known))}"
                f"{did_you_mean(str(kind), known)}"
            )
            continue
        options = {k: v for k, v in entry.items() if k != "type"}
        try:
            actions.append(cls(options, ctx, where))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        for a in actions:
            a.close()
        raise ConfigError(problems)
    return actions
