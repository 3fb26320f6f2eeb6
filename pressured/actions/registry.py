"""Action plugins: found through the versioned entry-point group, validated before the daemon
runs (a bad option fails at start, not at the first event), a broken plugin skipped with a
warning naming it."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from pressured.actions.base import Action, ActionContext
from pressured.config import Config
from pressured.errors import ConfigError, did_you_mean

log = logging.getLogger("pressured.actions")

ACTION_GROUP = "pressured.actions.v1"


def load_action_classes() -> dict[str, type[Action]]:
    """Action classes by type name; a plugin that fails to import is skipped with a warning."""
    out: dict[str, type[Action]] = {}
    for ep in entry_points(group=ACTION_GROUP):
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
    classes = load_action_classes()
    actions: list[Action] = []
    problems: list[str] = []
    for i, entry in enumerate(cfg.actions):
        where = f"actions[{i}]"
        kind = entry.get("type")
        cls = classes.get(str(kind))
        if cls is None:
            problems.append(
                f"{where}.type: unknown action {kind!r}; known: {', '.join(sorted(classes))}"
                f"{did_you_mean(str(kind), classes)}"
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
