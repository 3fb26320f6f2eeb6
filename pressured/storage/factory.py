"""Build the storage backend from the ``storage`` section of the configuration.

    storage: {type: local|s3, path: /var/lib/pressured/storage,
              s3: {bucket, region, prefix, endpoint_url, path_style: false},
              spool: {path: /var/lib/pressured/spool, max_bytes: 1073741824}}

``parse_storage_config`` only validates (phase one, before the daemon runs) and reports every
bad key at once; ``open_storage`` validates and builds. S3 always sits behind the local spool so
an unreachable bucket never loses a capture.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from pressured.errors import QUOTE_LIMIT, ConfigError, StorageError, quote, suggest
from pressured.storage.base import Destination, Storage, validate_key
from pressured.storage.local import DEFAULT_ROOT, LocalStorage
from pressured.storage.s3 import S3Storage
from pressured.storage.spool import DEFAULT_MAX_BYTES, DEFAULT_SPOOL_DIR, SpoolingStorage

TYPES = ("local", "s3")
_TOP_KEYS = ("type", "path", "s3", "spool")
_S3_KEYS = ("bucket", "region", "prefix", "endpoint_url", "path_style")
_SPOOL_KEYS = ("path", "max_bytes")
# Loose on purpose: legacy us-east-1 buckets and S3-compatible stores allow more than today's
# AWS rules; this catches "s3://bucket/prefix" and empty names, not every invalid name.
_BUCKET = re.compile(r"[A-Za-z0-9._-]{3,255}")


@dataclass(frozen=True)
class S3Config:
    bucket: str
    region: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    path_style: bool = False


@dataclass(frozen=True)
class StorageConfig:
    type: str = "local"
    path: str = DEFAULT_ROOT
    s3: S3Config | None = None
    spool_path: str = DEFAULT_SPOOL_DIR
    spool_max_bytes: int = DEFAULT_MAX_BYTES


def _suggest(word: str, known: tuple[str, ...]) -> str:
    close = suggest(word, known) if len(word) <= QUOTE_LIMIT else None
    return f"did you mean {close!r}?" if close else f"known: {', '.join(known)}"


def _shown(name: str) -> str:
    """A key as errors name it: whole when of a sane length, else quoted and cut."""
    return name if len(name) <= QUOTE_LIMIT else quote(name)


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, where: str, what: str, value: object) -> None:
        self.problems.append(f"{where}: {what} (got {quote(value)})")

    def section(self, value: object, where: str, known: tuple[str, ...]) -> Mapping[str, object]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.bad(where, "must be a mapping", value)
            return {}
        for name in value:
            if name not in known:
                shown = _shown(str(name))
                self.bad(f"{where}.{shown}", f"unknown key, {_suggest(str(name), known)}", name)
        return value

    def text(
        self, section: Mapping[str, object], name: str, where: str, default: str | None
    ) -> str | None:
        value = section.get(name, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.bad(f"{where}.{name}", "must be a non-empty string", value)
            return default
        return value


def parse_storage_config(
    section: Mapping[str, object] | None, where: str = "storage"
) -> StorageConfig:
    """Validate the storage section; raises ConfigError naming every bad key."""
    check = _Checker()
    top = check.section(section, where, _TOP_KEYS)

    kind = top.get("type", "local")
    if kind not in TYPES:
        close = suggest(str(kind).lower(), TYPES) if len(str(kind)) <= QUOTE_LIMIT else None
        hint = f", did you mean {close!r}?" if close else ""
        check.bad(f"{where}.type", f"must be one of {', '.join(TYPES)}{hint}", kind)
        kind = "local"
    path = check.text(top, "path", where, DEFAULT_ROOT) or DEFAULT_ROOT

    s3_where = f"{where}.s3"
    s3_section = check.section(top.get("s3"), s3_where, _S3_KEYS)
    s3: S3Config | None = None
    bucket = s3_section.get("bucket")
    if bucket is None:
        if kind == "s3":
            check.bad(f"{s3_where}.bucket", "required when storage.type is s3", None)
    elif not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
        hint = (
            "give the bucket name only; the key prefix goes in prefix"
            if isinstance(bucket, str) and ("/" in bucket or ":" in bucket)
            else "must be a bucket name (3-255 letters, digits, '.', '-', '_')"
        )
        check.bad(f"{s3_where}.bucket", hint, bucket)
    region = check.text(s3_section, "region", s3_where, None)
    prefix = s3_section.get("prefix", "")
    if not isinstance(prefix, str):
        check.bad(f"{s3_where}.prefix", "must be a string", prefix)
        prefix = ""
    prefix = prefix.strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except StorageError:
            check.bad(f"{s3_where}.prefix", "must be a relative path without '.' or '..'", prefix)
    endpoint_url = check.text(s3_section, "endpoint_url", s3_where, None)
    if endpoint_url is not None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            check.bad(
                f"{s3_where}.endpoint_url", "must be an http:// or https:// URL", endpoint_url
            )
    path_style = s3_section.get("path_style", False)
    if not isinstance(path_style, bool):
        check.bad(f"{s3_where}.path_style", "must be true or false", path_style)
        path_style = False
    if isinstance(bucket, str):
        s3 = S3Config(bucket, region, prefix, endpoint_url, path_style)

    spool_where = f"{where}.spool"
    spool = check.section(top.get("spool"), spool_where, _SPOOL_KEYS)
    spool_path = check.text(spool, "path", spool_where, DEFAULT_SPOOL_DIR) or DEFAULT_SPOOL_DIR
    max_bytes = spool.get("max_bytes", DEFAULT_MAX_BYTES)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        check.bad(f"{spool_where}.max_bytes", "must be a positive integer (bytes)", max_bytes)
        max_bytes = DEFAULT_MAX_BYTES

    if check.problems:
        raise ConfigError(check.problems)
    return StorageConfig(str(kind), path, s3, spool_path, max_bytes)


def _s3(config: S3Config) -> S3Storage:
    return S3Storage(
        config.bucket,
        region=config.region,
        prefix=config.prefix,
        endpoint_url=config.endpoint_url,
        path_style=config.path_style,
    )


def build_storage(config: StorageConfig) -> Storage:
    """The backend for a validated config; S3 comes wrapped in the spool."""
    if config.type == "local" or config.s3 is None:
        return LocalStorage(config.path)
    return SpoolingStorage(
        _s3(config.s3),
        config.spool_path,
        max_bytes=config.spool_max_bytes,
        opener=open_destination,
    )


def open_destination(destination: Destination) -> Storage:
    """The bare backend (no spool) for a destination recorded earlier: the spool delivers an
    entry written under an earlier configuration to where it was meant to go. The recorded
    values pass the same checks as the configuration; StorageError when they do not."""
    section: dict[str, object]
    if destination.type == "s3":
        fields = {**destination.how, **destination.where}
        section = {"type": "s3", "s3": {k: v for k, v in fields.items() if v is not None}}
    elif destination.type == "local":
        section = {"type": "local", "path": destination.where.get("path")}
    else:
        raise StorageError(
            f"recorded destination: unknown storage type {quote(destination.type)} "
            f"(known: {', '.join(TYPES)})"
        )
    try:
        config = parse_storage_config(section, "recorded destination")
    except ConfigError as exc:
        raise StorageError(str(exc)) from exc
    if config.s3 is not None and config.type == "s3":
        return _s3(config.s3)
    return LocalStorage(config.path)


def open_storage(section: Mapping[str, object] | None, where: str = "storage") -> Storage:
    """Validate ``section`` and build its backend (ConfigError / StorageError)."""
    return build_storage(parse_storage_config(section, where))
