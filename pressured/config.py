"""One validated Config from defaults, a JSON/YAML file, the environment and flags.

Precedence: flags > environment > file > defaults. Every value remembers where it came from
(``Config.origin``), which `pressured config check` prints. Errors name the key path and the bad
value and suggest the closest known key; they are collected, not stopped at the first.

Environment:
  PRESSURED_CONFIG                  the config file (like -c)
  PRESSURED_<NAME>                  the keys in ENV_KEYS below (PRESSURED_WARN_PERCENT, ...)
  PRESSURED__<SECTION>__<KEY>       any key by path, e.g. PRESSURED__STORAGE__S3__BUCKET
  NODE_NAME, POD_UID, POD_NAME, POD_NAMESPACE   (the Downward API)
  OOMHero's WARNING, CRITICAL (percent), WARNING_SIGNAL, CRITICAL_SIGNAL (names like SIGUSR1),
  COOLDOWN (Go durations such as "1m30s", or bare seconds). The signal variables add a signal
  action with those signals.

Sections owned by a subsystem are validated by it (DESIGN.md rule 7): thresholds and rules by
pressured.engine, metrics by pressured.metrics, storage by pressured.storage.factory, each action
by its class when the daemon builds it.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import signal as _signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pressured.errors import ConfigError

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
        "metric": "working_set",
        "predict_seconds": None,
        "predict_window_seconds": 60.0,
        "predict_samples": 30,
        "recovered_events": True,
    },
    "rules": {"warning": None, "critical": None},
    "actions": None,
    "kills": {
        "kmsg": {"enabled": True, "path": "/dev/kmsg", "replay": False},
        "tracepoint": {"enabled": True, "tracefs": "/sys/kernel/tracing"},
        "bcc": {"enabled": False},
        "window_seconds": 5.0,
    },
    "metrics": {"enabled": True, "port": 9000, "address": "0.0.0.0", "pid_labels": False},  # noqa: S104 - a metrics endpoint is scraped from outside the pod
    "storage": {
        "type": "local",
        "path": "/var/lib/pressured/storage",
        "s3": {"bucket": None, "region": None, "prefix": "", "endpoint_url": None, "path_style": False},
        "spool": {"path": "/var/lib/pressured/spool", "max_bytes": 1 << 30},
    },
    "plugins": {
        "lua": {
            "script": None,
            "scripts_dir": None,
            "inline_script": None,
            "timeout_ms": 5000,
            "memory_mb": 64,
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
    # OOMHero
    "WARNING": "thresholds.warn_percent",
    "CRITICAL": "thresholds.critical_percent",
    "COOLDOWN": "thresholds.cooldown_seconds",
}

# Keys whose values are free-form mappings (not checked key by key here).
OPAQUE = {"actions"}


def suggest(key: str, known: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return match[0] if match else None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, where: str) -> float:
    """Go durations ("1m30s", "500ms", "2h") or bare seconds ("90", "1.5")."""
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ConfigError(f"{where}: not a duration: {text!r} (use seconds or Go form like 1m30s)")
    return total


def parse_signal(value: Any, where: str) -> int:
    """A signal by name (SIGUSR1, USR1) or number."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(_signal.Signals(value))
        except ValueError:
            raise ConfigError(f"{where}: no such signal number: {value}") from None
    if isinstance(value, str):
        name = value.strip().upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            return int(_signal.Signals[name])
        except KeyError:
            pass
    raise ConfigError(f"{where}: not a signal name: {value!r} (e.g. SIGUSR1)")


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


def load_file(path: str) -> dict[str, Any]:
    """Parse a JSON or YAML file into a mapping; errors name the file (and line for YAML)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
    else:
        import yaml  # noqa: PLC0415 - only needed when a file is given

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
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
    if isinstance(default, bool):
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {raw!r}") from None
    if isinstance(default, float) or path in ("thresholds.predict_seconds",):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
    if isinstance(default, list):
        return [p for p in raw.split(",") if p]
    return raw


def _default_for(path: str) -> Any:
    node: Any = DEFAULTS
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _merge(
    base: dict[str, Any], over: Mapping[str, Any], origin: dict[str, str], source: str,
    problems: list[str], prefix: str = "",
) -> None:
    for key, value in over.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str):
            problems.append(f"{path}: keys must be text, got {key!r}")
            continue
        if path not in KNOWN_KEYS and path not in SECTIONS:
            siblings = {k[len(prefix):].split(".")[0] for k in KNOWN_KEYS | SECTIONS if k.startswith(prefix)}
            hint = suggest(key, siblings)
            problems.append(
                f"{path}: unknown key (in {source})" + (f", did you mean {prefix}{hint!r}?" if hint else "")
            )
            continue
        if path in SECTIONS and path not in KNOWN_KEYS:
            if not isinstance(value, Mapping):
                problems.append(f"{path}: expected a mapping, got {value!r} (in {source})")
                continue
            node = base.setdefault(key, {})
            _merge(node, value, origin, source, problems, path + ".")
            continue
        base[key] = copy.deepcopy(value)
        origin[path] = source


def _env_layer(env: Mapping[str, str], problems: list[str]) -> list[tuple[str, Any, str]]:
    out: list[tuple[str, Any, str]] = []
    for name, path in ENV_KEYS.items():
        if name in env and env[name] != "":
            try:
                out.append((path, _coerce_env(path, env[name], f"env:{name}"), f"env:{name}"))
            except ConfigError as exc:
                problems.extend(exc.problems)
    for name, raw in env.items():
        if not name.startswith("PRESSURED__"):
            continue
        path = ".".join(p.lower() for p in name[len("PRESSURED__"):].split("__"))
        if path not in KNOWN_KEYS:
            hint = suggest(path, KNOWN_KEYS)
            problems.append(
                f"{path}: unknown key (from env:{name})" + (f", did you mean {hint!r}?" if hint else "")
            )
            continue
        try:
            out.append((path, _coerce_env(path, raw, f"env:{name}"), f"env:{name}"))
        except ConfigError as exc:
            problems.extend(exc.problems)
    return out


def _oomhero_signal_action(env: Mapping[str, str], problems: list[str]) -> dict[str, Any] | None:
    warn, crit = env.get("WARNING_SIGNAL"), env.get("CRITICAL_SIGNAL")
    if not warn and not crit:
        return None
    action: dict[str, Any] = {"type": "signal"}
    for name, key, value in (("WARNING_SIGNAL", "warn", warn), ("CRITICAL_SIGNAL", "critical", crit)):
        if value:
            try:
                parse_signal(value, f"env:{name}")
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            action[key] = value
    return action


def load(
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    validate: bool = True,
) -> Config:
    """Build the effective Config; raises ConfigError listing every problem found."""
    env = os.environ if env is None else env
    problems: list[str] = []
    data = copy.deepcopy(DEFAULTS)
    origin: dict[str, str] = {}
    path = path or env.get("PRESSURED_CONFIG") or None
    if path:
        try:
            _merge(data, load_file(path), origin, f"file:{path}", problems)
        except ConfigError as exc:
            raise ConfigError(exc.problems) from exc
    for key, value, source in _env_layer(env, problems):
        _set(data, key, value)
        origin[key] = source
    extra_action = _oomhero_signal_action(env, problems)
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key not in KNOWN_KEYS:
            problems.append(f"{key}: unknown key (from flags)")
            continue
        _set(data, key, value)
        origin[key] = f"flag:{key}"
    if data.get("actions") is None:
        data["actions"] = [{"type": "log"}]
    if extra_action is not None:
        data["actions"] = [*data["actions"], extra_action]
        origin["actions"] = origin.get("actions", "default") + " + env:WARNING_SIGNAL/CRITICAL_SIGNAL"
    cfg = Config(data, origin, path)
    if validate:
        problems.extend(check(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def _want(cfg: Config, path: str, kinds: tuple[type, ...], problems: list[str], *, nullable: bool = False) -> Any:
    value = cfg.get(path)
    if value is None and nullable:
        return None
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds)
        problems.append(f"{path}: expected {names}, got {value!r} (from {cfg.origin.get(path, 'default')})")
        return None
    return value


def check(cfg: Config) -> list[str]:
    """Validate core keys here and delegate owned sections; returns every problem found."""
    p: list[str] = []
    mode = cfg.get("source.mode")
    if mode not in MODES:
        hint = suggest(str(mode), MODES)
        p.append(f"source.mode: must be one of {', '.join(MODES)}, got {mode!r}"
                 + (f" (did you mean {hint!r}?)" if hint else ""))
    for key, lo in (("source.poll_interval_ms", 10), ("source.min_interval_ms", 1),
                    ("source.kubelet.poll_interval_ms", 100), ("source.psi.stall_us", 1),
                    ("source.psi.window_us", 1), ("metrics.port", 0)):
        v = _want(cfg, key, (int,), p)
        if v is not None and v < lo:
            p.append(f"{key}: must be at least {lo}, got {v}")
    lo_ms, hi_ms = cfg.get("source.min_interval_ms"), cfg.get("source.poll_interval_ms")
    if isinstance(lo_ms, int) and isinstance(hi_ms, int) and lo_ms > hi_ms:
        p.append(f"source.min_interval_ms: {lo_ms} is above source.poll_interval_ms {hi_ms}")
    port = cfg.get("metrics.port")
    if isinstance(port, int) and port > 65535:
        p.append(f"metrics.port: must be at most 65535, got {port}")
    if cfg.get("source.psi.kind") not in ("some", "full"):
        p.append(f"source.psi.kind: must be 'some' or 'full', got {cfg.get('source.psi.kind')!r}")
    st, win = cfg.get("source.psi.stall_us"), cfg.get("source.psi.window_us")
    if isinstance(st, int) and isinstance(win, int) and st > win:
        p.append(f"source.psi.stall_us: {st} is above source.psi.window_us {win}")
    for key in ("source.machine", "source.psi.enabled", "dry_run",
                "kills.kmsg.enabled", "kills.kmsg.replay", "kills.tracepoint.enabled",
                "kills.bcc.enabled", "metrics.enabled", "metrics.pid_labels"):
        _want(cfg, key, (bool,), p)
    for key in ("source.cgroup.path", "source.proc_root", "kills.kmsg.path",
                "kills.tracepoint.tracefs", "metrics.address"):
        _want(cfg, key, (str,), p)
    for key in ("state_dir", "events_out", "kubernetes.node_name", "kubernetes.kubeconfig",
                "kubernetes.pod_uid", "kubernetes.pod_name", "kubernetes.pod_namespace"):
        _want(cfg, key, (str,), p, nullable=True)
    paths = cfg.get("source.cgroup.paths")
    if not isinstance(paths, list) or not all(isinstance(x, str) for x in paths):
        p.append(f"source.cgroup.paths: expected a list of cgroup directories, got {paths!r}")
    else:
        for i, x in enumerate(paths):
            if not os.path.isabs(x):
                p.append(f"source.cgroup.paths[{i}]: must be an absolute path, got {x!r}")
    kw = _want(cfg, "kills.window_seconds", (int, float), p)
    if kw is not None and kw <= 0:
        p.append(f"kills.window_seconds: must be positive, got {kw}")
    level = cfg.get("log_level")
    if not isinstance(level, str) or level.lower() not in LOG_LEVELS:
        p.append(f"log_level: must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    actions = cfg.get("actions")
    if not isinstance(actions, list):
        p.append(f"actions: expected a list of {{type: NAME, ...}}, got {actions!r}")
    else:
        for i, a in enumerate(actions):
            if not isinstance(a, Mapping) or not isinstance(a.get("type"), str):
                p.append(f"actions[{i}]: expected a mapping with a 'type', got {a!r}")
    p.extend(_delegate(cfg))
    return p


def _delegate(cfg: Config) -> list[str]:
    problems: list[str] = []
    try:
        from pressured.engine import EngineSettings  # noqa: PLC0415

        EngineSettings.from_config(cfg.data)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        from pressured.metrics import MetricsSettings  # noqa: PLC0415

        MetricsSettings.from_config(cfg.data)
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
