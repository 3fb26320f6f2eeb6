"""One validated Config from defaults, a JSON/YAML file, the environment and flags.

Precedence: flags > environment > file > defaults. Every value remembers where it came from
(``Config.origin``), which `pressured config check` prints. Errors name the key path, the bad
value and where it came from, and suggest the closest known key; they are collected, not stopped
at the first. Values are checked with pressured.settings' Checker, as every section is.

Environment:
  PRESSURED_CONFIG                  the config file (like -c)
  PRESSURED_<NAME>                  the keys in ENV_KEYS below (PRESSURED_WARN_PERCENT, ...)
  PRESSURED__<SECTION>__<KEY>       any key by path, e.g. PRESSURED__STORAGE__S3__BUCKET
  NODE_NAME, POD_UID, POD_NAME, POD_NAMESPACE   (the Downward API)
  OOMHero's WARNING, CRITICAL (percent), WARNING_SIGNAL, CRITICAL_SIGNAL (names like SIGUSR1),
  COOLDOWN (Go durations such as "1m30s", or bare seconds). The signal variables set the signals
  of the configured signal actions, or add one when there is none. Within the environment the
  most specific name wins: PRESSURED__A__B over PRESSURED_<NAME> over OOMHero's. An empty
  variable counts as unset.

Sections owned by a subsystem are validated by it: thresholds and rules by
pressured.engine, metrics by pressured.metrics, storage by pressured.storage.factory, each action
by its class when the daemon builds it, kills by pressured.kills.config (the rules the daemon
opens its kill sources with).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pressured.errors import ConfigError, quote
from pressured.settings import COMMA, Checker, hint, parse_duration, parse_signal, shown

__all__ = [
    "BOUNDS",
    "DEFAULTS",
    "ENV_KEYS",
    "KNOWN_KEYS",
    "LOG_LEVELS",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_VALUES",
    "MODES",
    "OOMHERO_KEYS",
    "Config",
    "check",
    "check_shape",
    "load",
    "load_file",
    "parse_duration",  # these two are pressured.settings'
    "parse_signal",
]

MODES = ("local", "sidecar", "node", "cluster")
LOG_LEVELS = ("debug", "info", "warning", "error")

DEFAULTS: dict[str, Any] = {
    "source": {
        "mode": "local",
        "poll_interval_ms": 1000,
        "min_interval_ms": 50,
        "cgroup": {"path": "/sys/fs/cgroup", "paths": []},
        "proc_root": "/proc",
        "machine": True,
        "psi": {"enabled": True, "kind": "some", "stall_us": 150_000, "window_us": 1_000_000},
        "kubelet": {"poll_interval_ms": 10_000, "namespace_filter": "", "label_selector": ""},
    },
    "thresholds": {
        "warn_percent": 70.0,
        "critical_percent": 85.0,
        "hysteresis_percent": 5.0,
        "cooldown_seconds": 60.0,
        "metric": "unreclaimable",
        "thrash_psi_percent": 10.0,
        "predict_seconds": None,
        "predict_window_seconds": 60.0,
        "predict_samples": 30,
        "recovered_events": True,
        "throttle_full_percent": 10.0,
        "throttle_seconds": 30.0,
    },
    "rules": {"warning": None, "critical": None},
    "actions": None,
    "kills": {
        "kmsg": {"enabled": True, "path": "/dev/kmsg", "replay": False},
        "tracepoint": {"enabled": True, "tracefs": "/sys/kernel/tracing"},
        "bcc": {"enabled": False},
        "window_seconds": 5.0,
    },
    "metrics": {
        "enabled": True,
        "port": 9000,
        "address": "0.0.0.0",  # noqa: S104 - a metrics endpoint is scraped from outside the pod
        "pid_labels": False,
        "self_degraded_percent": 85.0,
        "self_shed_percent": 90.0,
    },
    "storage": {
        "type": "local",
        "path": "/var/lib/pressured/storage",
        "s3": {
            "bucket": None,
            "region": None,
            "prefix": "",
            "endpoint_url": None,
            "path_style": False,
        },
        "spool": {"path": "/var/lib/pressured/spool", "max_bytes": 1 << 30},
    },
    "plugins": {
        "lua": {
            "script": None,
            "scripts_dir": None,
            "inline_script": None,
            "timeout_ms": 5000,
            "memory_mb": 64,
            "env_allow": [],
        }
    },
    "kubernetes": {
        "node_name": None,
        "kubeconfig": None,
        "pod_uid": None,
        "pod_name": None,
        "pod_namespace": None,
    },
    "dry_run": False,
    "log_level": "info",
    "state_dir": None,
    "events_out": None,
}

ENV_KEYS: dict[str, str] = {
    "PRESSURED_MODE": "source.mode",
    "PRESSURED_POLL_INTERVAL_MS": "source.poll_interval_ms",
    "PRESSURED_CGROUP_PATH": "source.cgroup.path",
    "PRESSURED_WARN_PERCENT": "thresholds.warn_percent",
    "PRESSURED_CRITICAL_PERCENT": "thresholds.critical_percent",
    "PRESSURED_HYSTERESIS_PERCENT": "thresholds.hysteresis_percent",
    "PRESSURED_COOLDOWN_SECONDS": "thresholds.cooldown_seconds",
    "PRESSURED_METRIC": "thresholds.metric",
    "PRESSURED_DRY_RUN": "dry_run",
    "PRESSURED_LOG_LEVEL": "log_level",
    "PRESSURED_METRICS_PORT": "metrics.port",
    "PRESSURED_STATE_DIR": "state_dir",
    "PRESSURED_EVENTS_OUT": "events_out",
    "NODE_NAME": "kubernetes.node_name",
    "POD_UID": "kubernetes.pod_uid",
    "POD_NAME": "kubernetes.pod_name",
    "POD_NAMESPACE": "kubernetes.pod_namespace",
    "KUBECONFIG": "kubernetes.kubeconfig",
}

OOMHERO_KEYS: dict[str, str] = {
    "WARNING": "thresholds.warn_percent",
    "CRITICAL": "thresholds.critical_percent",
    "COOLDOWN": "thresholds.cooldown_seconds",
}
"""OOMHero's variables, read below every PRESSURED_* one (a pressured name is more specific)."""

# Keys whose values are free-form mappings (not checked key by key here).
OPAQUE = {"actions"}

MAX_FILE_BYTES = 16 << 20
"""A config file larger than this is refused before it is parsed."""
MAX_DEPTH = 32
"""Levels of nesting a config may have (the deepest known key is 4 levels down)."""
MAX_VALUES = 100_000
"""Values (scalars, lists and mappings) a config may hold once YAML aliases are expanded."""

HOUR_MS = 3_600_000
PSI_WINDOW_MAX_US = 10_000_000
"""The kernel refuses a PSI trigger window above 10 s (WINDOW_MAX_US)."""
BOUNDS: dict[str, tuple[int, int]] = {
    "source.poll_interval_ms": (10, HOUR_MS),
    "source.min_interval_ms": (1, HOUR_MS),
    "source.kubelet.poll_interval_ms": (100, HOUR_MS),
    "source.psi.stall_us": (1, PSI_WINDOW_MAX_US),
    "source.psi.window_us": (1, PSI_WINDOW_MAX_US),
    "metrics.port": (0, 65535),
    "storage.spool.max_bytes": (0, 1 << 40),
}
"""Inclusive (lowest, highest) of the whole-number keys checked here. Intervals: at most an
hour (a longer one is a watcher that does not watch); PSI: what the kernel accepts; the spool:
at most 1 TiB of disk."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and path not in OPAQUE:
            out.update(_flatten(v, path + "."))
        else:
            out[path] = v
    return out


KNOWN_KEYS: set[str] = set(_flatten(DEFAULTS))


def _known_sections() -> set[str]:
    out = set()
    for key in KNOWN_KEYS:
        parts = key.split(".")
        for i in range(1, len(parts)):
            out.add(".".join(parts[:i]))
    return out


SECTIONS = _known_sections()


@dataclass
class Config:
    """The effective configuration as plain data, and where each value came from."""

    data: dict[str, Any]
    origin: dict[str, str] = field(default_factory=dict)
    file: str | None = None

    def get(self, path: str, default: Any = None) -> Any:
        node: Any = self.data
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def mode(self) -> str:
        return str(self.get("source.mode"))

    @property
    def dry_run(self) -> bool:
        return bool(self.get("dry_run"))

    @property
    def actions(self) -> list[dict[str, Any]]:
        return list(self.data.get("actions") or [])

    def explain(self) -> list[tuple[str, Any, str]]:
        """(key, value, origin) for every leaf, sorted: for `pressured config check`."""
        flat = _flatten({k: v for k, v in self.data.items() if k != "actions"})
        rows = [(k, v, self.origin.get(k, "default")) for k, v in sorted(flat.items())]
        for i, action in enumerate(self.actions):
            rows.append((f"actions[{i}]", action, self.origin.get("actions", "default")))
        return rows


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def check_shape(data: Any, where: str) -> None:
    """Refuse data nested more than MAX_DEPTH levels, holding more than MAX_VALUES values with
    YAML aliases expanded (an alias bomb is small in memory only until something walks it: a
    copy, a repr, a JSON dump), or containing itself. Each shared value is walked once."""
    memo: dict[int, tuple[int, int]] = {}  # id -> (levels below it, values in it)
    active: set[int] = set()

    def walk(node: Any, depth: int) -> tuple[int, int]:
        if not isinstance(node, dict | list | tuple | set | frozenset):
            return 0, 1
        key = id(node)
        if key in active:
            raise ConfigError(f"{where}: a value contains itself (a recursive YAML alias)")
        if key not in memo:
            if depth >= MAX_DEPTH:
                raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep")
            active.add(key)
            height, count = 0, 1
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            for child in children:
                h, c = walk(child, depth + 1)
                height, count = max(height, h + 1), count + c
                if count > MAX_VALUES:
                    raise ConfigError(
                        f"{where}: more than {MAX_VALUES} values once YAML aliases are "
                        "expanded (an alias bomb?)"
                    )
            active.discard(key)
            memo[key] = (height, count)
        height, count = memo[key]
        if depth + height > MAX_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        return height, count

    walk(data, 0)


def load_file(path: str) -> dict[str, Any]:
    """Parse a JSON or YAML file into a mapping; errors name the file (and line for YAML)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)  # not all of /dev/zero
        if len(raw) > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: config file larger than {MAX_FILE_BYTES >> 20} MiB")
        text = raw.decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a text file (byte {exc.start}: invalid UTF-8); expected JSON or YAML"
        ) from exc
    if path.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
        except RecursionError:
            raise ConfigError(f"{path}: nested more than {MAX_DEPTH} levels deep") from None
        except ValueError as exc:  # an integer with more digits than Python converts
            reason = str(exc).partition("; use sys.set_int_max_str_digits()")[0]
            raise ConfigError(f"{path}: invalid JSON: {reason}") from None
    else:
        import yaml  # noqa: PLC0415 - only needed when a file is given

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
        except RecursionError:
            raise ConfigError(f"{path}: nested more than {MAX_DEPTH} levels deep") from None
        except (ValueError, TypeError, OverflowError) as exc:
            # a scalar its constructor refuses: an integer of 5000 digits, a date 2024-13-45
            # (Python's advice on the digits is for programmers, not for this file's author)
            reason = str(exc).partition("; use sys.set_int_max_str_digits()")[0]
            raise ConfigError(f"{path}: invalid YAML: {reason}") from None
    check_shape(data, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _coerce_env(path: str, raw: str, source: str) -> Any:
    """Environment values are text: give them the type of the default."""
    default = _default_for(path)
    where = f"{path} (from {source})"
    if path == "thresholds.cooldown_seconds":
        return parse_duration(raw, where)
    if path in OPAQUE:
        # a whole list of actions fits in one variable as JSON (a Helm value, a compose file)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f'{where}: expected JSON such as [{{"type": "log"}}], got {quote(raw)} ({exc.msg})'
            ) from exc
        except RecursionError:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: invalid JSON: {exc}") from None
        check_shape(value, where)
        return value
    check = Checker(got=COMMA)
    value = raw
    if isinstance(default, bool):
        value = check.flag(raw, where, None, from_text=True)
    elif isinstance(default, int):
        value = check.number(raw, where, None, integer=True, from_text=True)
    elif isinstance(default, float) or path == "thresholds.predict_seconds":
        value = check.number(raw, where, None, from_text=True)
    elif isinstance(default, list):
        value = [p for p in raw.split(",") if p]
    check.raise_if_any()
    return value


def _default_for(path: str) -> Any:
    node: Any = DEFAULTS
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _merge(
    base: dict[str, Any],
    over: Mapping[str, Any],
    origin: dict[str, str],
    source: str,
    problems: list[str],
    *,
    prefix: str = "",
) -> None:
    for key, value in over.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str):
            problems.append(f"{path}: keys must be text, got {quote(key)} (in {source})")
            continue
        if path not in KNOWN_KEYS and path not in SECTIONS:
            siblings = {
                k[len(prefix) :].split(".")[0]
                for k in KNOWN_KEYS | SECTIONS
                if k.startswith(prefix)
            }
            problems.append(
                f"{shown(path)}: unknown key (in {source})" + hint(key, siblings, prefix)
            )
            continue
        if path in SECTIONS and path not in KNOWN_KEYS:
            if value is None:
                continue  # a YAML section with every key commented out
            if not isinstance(value, Mapping):
                problems.append(f"{path}: expected a mapping, got {quote(value)} (in {source})")
                continue
            node = base.setdefault(key, {})
            _merge(node, value, origin, source, problems, prefix=path + ".")
            continue
        base[key] = copy.deepcopy(value)
        origin[path] = source


def _env_layer(env: Mapping[str, str], problems: list[str]) -> list[tuple[str, Any, str]]:
    """(path, value, origin) from the environment, lowest precedence first: OOMHero's names,
    then PRESSURED_<NAME>, then PRESSURED__<SECTION>__<KEY> (the most specific wins)."""
    out: list[tuple[str, Any, str]] = []
    named = [*OOMHERO_KEYS.items(), *ENV_KEYS.items()]
    by_path = [
        (name, ".".join(p.lower() for p in name[len("PRESSURED__") :].split("__")))
        for name in sorted(env)
        if name.startswith("PRESSURED__")
    ]
    for name, path in [*named, *by_path]:
        raw = env.get(name)
        if raw is None or raw == "":
            continue  # an empty variable is an unset one (Helm and compose render them so)
        if path not in KNOWN_KEYS:
            problems.append(
                f"{shown(path)}: unknown key (from env:{shown(name)})" + hint(path, KNOWN_KEYS)
            )
            continue
        try:
            out.append((path, _coerce_env(path, raw, f"env:{name}"), f"env:{name}"))
        except ConfigError as exc:
            problems.extend(exc.problems)
    return out


def _oomhero_signals(env: Mapping[str, str], problems: list[str]) -> dict[str, str]:
    """{"warn": ..., "critical": ...} from WARNING_SIGNAL / CRITICAL_SIGNAL, checked."""
    out: dict[str, str] = {}
    for name, key in (("WARNING_SIGNAL", "warn"), ("CRITICAL_SIGNAL", "critical")):
        value = env.get(name)
        if not value:
            continue
        try:
            parse_signal(value, f"env:{name}")
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        out[key] = value
    return out


def _apply_oomhero_signals(
    data: dict[str, Any], origin: dict[str, str], sig: dict[str, str]
) -> None:
    """The environment outranks the file: configured signal actions take these signals; with
    none configured, one is added (OOMHero's behaviour: the variables alone turn signals on)."""
    actions = data["actions"]
    if not isinstance(actions, list):
        return  # reported by check()
    note = "env:" + "/".join(
        name
        for name, key in (("WARNING_SIGNAL", "warn"), ("CRITICAL_SIGNAL", "critical"))
        if key in sig
    )
    signal_actions = [a for a in actions if isinstance(a, dict) and a.get("type") == "signal"]
    if signal_actions:
        for a in signal_actions:
            a.update(sig)
    else:
        actions.append({"type": "signal", **sig})
    origin["actions"] = f"{origin.get('actions', 'default')} + {note}"


def load(
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    validate: bool = True,
) -> Config:
    """Build the effective Config; raises ConfigError listing every problem found.

    ``flags`` maps key paths to values (None: not given). ``env`` defaults to os.environ.
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    data = copy.deepcopy(DEFAULTS)
    origin: dict[str, str] = {}
    path = path or env.get("PRESSURED_CONFIG") or None
    if path:
        _merge(data, load_file(path), origin, f"file:{path}", problems)
    for key, value, source in _env_layer(env, problems):
        _set(data, key, value)
        origin[key] = source
    oomhero_signals = _oomhero_signals(env, problems)
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key not in KNOWN_KEYS:
            problems.append(f"{shown(key)}: unknown key (from flags)" + hint(key, KNOWN_KEYS))
            continue
        _set(data, key, copy.deepcopy(value))
        origin[key] = f"flag:{key}"
    if data.get("actions") is None:
        data["actions"] = [{"type": "log"}]
    if oomhero_signals:
        _apply_oomhero_signals(data, origin, oomhero_signals)
    cfg = Config(data, origin, path)
    if validate:
        problems.extend(check(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def _origin(cfg: Config) -> Callable[[str], str | None]:
    """Where the value a problem names came from: its key's origin (an item of a list: the
    list's). The entries of an opaque key are the actions': they report as the actions do."""

    def origin(where: str) -> str | None:
        key = where.split("[", 1)[0]
        if key != where and key in OPAQUE:
            return None
        return cfg.origin.get(key, "default")

    return origin


def check(cfg: Config) -> list[str]:
    """Validate core keys here and delegate owned sections; returns every problem found."""
    check = Checker(got=COMMA, origin=_origin(cfg))
    check.choice(cfg.get("source.mode"), "source.mode", MODES, None)
    number: dict[str, int | None] = {
        key: check.number(cfg.get(key), key, None, min=lo, max=hi, integer=True)
        for key, (lo, hi) in BOUNDS.items()
    }
    lo_ms, hi_ms = number["source.min_interval_ms"], number["source.poll_interval_ms"]
    if lo_ms is not None and hi_ms is not None and lo_ms > hi_ms:
        check.add(
            f"source.min_interval_ms: {quote(lo_ms)} is above source.poll_interval_ms "
            f"{quote(hi_ms)}"
        )
    check.choice(cfg.get("source.psi.kind"), "source.psi.kind", ("some", "full"), None)
    st, win = number["source.psi.stall_us"], number["source.psi.window_us"]
    if st is not None and win is not None and st > win:
        check.add(f"source.psi.stall_us: {quote(st)} is above source.psi.window_us {quote(win)}")
    for key in (
        "source.machine",
        "source.psi.enabled",
        "dry_run",
        "metrics.enabled",
        "metrics.pid_labels",
    ):
        check.flag(cfg.get(key), key, None)
    for key in (
        "source.proc_root",
        "source.kubelet.namespace_filter",
        "source.kubelet.label_selector",
        "metrics.address",
    ):
        check.text(cfg.get(key), key, None)
    check.path(cfg.get("source.cgroup.path"), "source.cgroup.path", None)
    for key in (
        "state_dir",
        "events_out",
        "kubernetes.node_name",
        "kubernetes.kubeconfig",
        "kubernetes.pod_uid",
        "kubernetes.pod_name",
        "kubernetes.pod_namespace",
    ):
        check.text(cfg.get(key), key, None, nullable=True)
    paths = cfg.get("source.cgroup.paths")
    if not isinstance(paths, list) or not all(isinstance(x, str) for x in paths):
        check.bad("source.cgroup.paths", "expected a list of cgroup directories", paths)
    else:
        for i, x in enumerate(paths):
            check.path(x, f"source.cgroup.paths[{i}]", None)
    check.choice(cfg.get("log_level"), "log_level", LOG_LEVELS, None, fold_case=True)
    actions = cfg.get("actions")
    if not isinstance(actions, list):
        check.bad("actions", "expected a list of {type: NAME, ...}", actions)
    else:
        for i, a in enumerate(actions):
            if not isinstance(a, Mapping) or not isinstance(a.get("type"), str):
                check.bad(f"actions[{i}]", "expected a mapping with a 'type'", a)
    # An owner's second opinion on a key already reported here would only repeat it.
    p = check.problems
    reported = {_key_of(line) for line in p}
    p.extend(line for line in _delegate(cfg) if _key_of(line) not in reported)
    return p


def _key_of(problem: str) -> str:
    return problem.split(":", 1)[0].split(" ", 1)[0]


def _delegate(cfg: Config) -> list[str]:
    problems: list[str] = []
    try:
        from pressured.engine import EngineSettings  # noqa: PLC0415

        EngineSettings.from_config(cfg.data)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        from pressured.metrics_config import MetricsSettings  # noqa: PLC0415

        MetricsSettings.from_config(cfg.data)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        from pressured.kills.config import KillsConfig  # noqa: PLC0415

        KillsConfig.from_mapping(cfg.get("kills"), "kills")
    except ConfigError as exc:
        problems.extend(exc.problems)
    uses_storage = any(
        isinstance(a, Mapping) and a.get("type") in ("heapdump", "lua") for a in cfg.actions
    )
    if uses_storage:
        try:
            from pressured.storage.factory import parse_storage_config  # noqa: PLC0415

            parse_storage_config(cfg.get("storage"), "storage")
        except ConfigError as exc:
            problems.extend(exc.problems)
    return problems
