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

from pressured.errors import ConfigError, StorageError, quote
from pressured.settings import Checker
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


def parse_storage_config(
    section: Mapping[str, object] | None, where: str = "storage"
) -> StorageConfig:
    """Validate the storage section; raises ConfigError naming every bad key."""
    check = Checker()
    top = check.section(section, where, _TOP_KEYS)
    kind = check.choice(top.get("type", "local"), f"{where}.type", TYPES, "local")
    path = check.text(top.get("path"), f"{where}.path", DEFAULT_ROOT, empty=False, nullable=True)

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
    region = check.text(
        s3_section.get("region"), f"{s3_where}.region", None, empty=False, nullable=True
    )
    prefix = check.text(s3_section.get("prefix", ""), f"{s3_where}.prefix", "").strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except StorageError:
            check.bad(f"{s3_where}.prefix", "must be a relative path without '.' or '..'", prefix)
    endpoint_url = check.text(
        s3_section.get("endpoint_url"), f"{s3_where}.endpoint_url", None, empty=False, nullable=True
    )
    if endpoint_url is not None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            check.bad(
                f"{s3_where}.endpoint_url", "must be an http:// or https:// URL", endpoint_url
            )
    path_style = check.flag(s3_section.get("path_style", False), f"{s3_where}.path_style", False)
    if isinstance(bucket, str):
        s3 = S3Config(bucket, region, prefix, endpoint_url, path_style)

    spool_where = f"{where}.spool"
    spool = check.section(top.get("spool"), spool_where, _SPOOL_KEYS)
    spool_path = check.text(
        spool.get("path"), f"{spool_where}.path", DEFAULT_SPOOL_DIR, empty=False, nullable=True
    )
    max_bytes = check.number(
        spool.get("max_bytes", DEFAULT_MAX_BYTES),
        f"{spool_where}.max_bytes",
        DEFAULT_MAX_BYTES,
        min=1,
        integer=True,
    )

    check.raise_if_any()
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
