from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pressured.errors import ConfigError, StorageError
from pressured.storage.factory import S3Config, open_storage, parse_storage_config
from pressured.storage.local import DEFAULT_ROOT, LocalStorage
from tests.storage.conftest import write_then_fail


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "root")


def test_round_trip_creates_private_directories(store: LocalStorage) -> None:
    store.write("heaps/ns/pod/a.pb.gz", b"profile")

    assert store.read("heaps/ns/pod/a.pb.gz") == b"profile"
    assert store.exists("heaps/ns/pod/a.pb.gz")
    for directory in (store.root / "heaps", store.root / "heaps/ns", store.root / "heaps/ns/pod"):
        assert directory.stat().st_mode & 0o007 == 0, directory


def test_target_appears_only_on_close(store: LocalStorage) -> None:
    store.write("k", b"old")
    writer = store.open_write("k")
    writer.write(b"new ")
    writer.write(b"content")

    assert store.read("k") == b"old"
    assert list(store.list()) == ["k"]  # the temporary file is not a key
    assert len(os.listdir(store.root)) == 2

    writer.close()
    assert store.read("k") == b"new content"
    assert os.listdir(store.root) == ["k"]


def test_abort_leaves_old_content_and_no_temporary(store: LocalStorage) -> None:
    store.write("k", b"old")
    with pytest.raises(RuntimeError, match="capture failed"):
        write_then_fail(store, "k", b"half")

    assert store.read("k") == b"old"
    assert os.listdir(store.root) == ["k"]


def test_write_stream_counts_bytes(store: LocalStorage) -> None:
    assert store.write_stream("s", (b"ab" for _ in range(1000))) == 2000
    assert store.read("s") == b"ab" * 1000


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a/"])
def test_bad_keys_are_refused_before_touching_disk(tmp_path: Path, key: str) -> None:
    store = LocalStorage(tmp_path / "root")
    with pytest.raises(StorageError, match="invalid storage key"):
        store.write(key, b"x")
    assert not (tmp_path / "root").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = LocalStorage(tmp_path / "root")
    store.write("inside", b"x")
    (store.root / "link").symlink_to(outside)

    with pytest.raises(StorageError, match="outside"):
        store.write("link/escaped", b"x")
    with pytest.raises(StorageError, match="outside"):
        store.read("link/escaped")
    assert list(outside.iterdir()) == []


def test_missing_key_read_names_the_key(store: LocalStorage) -> None:
    with pytest.raises(StorageError, match=r"'nope/x'"):
        store.read("nope/x")
    assert not store.exists("nope/x")


def test_os_error_is_translated(store: LocalStorage) -> None:
    store.write("file", b"x")
    with pytest.raises(StorageError, match=r"local: .*'file/child'") as info:
        store.write("file/child", b"y")
    assert isinstance(info.value.__cause__, OSError)


def test_remove_is_idempotent(store: LocalStorage) -> None:
    store.write("a/b", b"x")
    store.remove("a/b")
    store.remove("a/b")
    assert not store.exists("a/b")


def test_rename_creates_target_directories(store: LocalStorage) -> None:
    store.write("tmp/x", b"data")
    store.rename("tmp/x", "final/deep/x")

    assert not store.exists("tmp/x")
    assert store.read("final/deep/x") == b"data"
    with pytest.raises(StorageError, match=r"'tmp/x'"):
        store.rename("tmp/x", "other")


def test_list_uses_string_prefixes_and_sorts(store: LocalStorage) -> None:
    for key in ("b/2", "a/c/1", "a/b", "ab", "a/a"):
        store.write(key, b"")

    assert list(store.list()) == ["a/a", "a/b", "a/c/1", "ab", "b/2"]
    assert list(store.list("a/")) == ["a/a", "a/b", "a/c/1"]
    assert list(store.list("a")) == ["a/a", "a/b", "a/c/1", "ab"]
    assert list(store.list("a/c/")) == ["a/c/1"]
    assert list(store.list("zzz/")) == []
    with pytest.raises(StorageError):
        list(store.list("../"))


def test_list_of_missing_root_is_empty(tmp_path: Path) -> None:
    assert list(LocalStorage(tmp_path / "never-created").list()) == []


def test_write_after_close_is_refused(store: LocalStorage) -> None:
    writer = store.open_write("k")
    writer.close()
    with pytest.raises(StorageError, match="closed"):
        writer.write(b"late")


# -- open_storage: the storage section of the configuration ---------------------------------


def test_default_section_is_local_storage() -> None:
    store = open_storage(None)
    assert isinstance(store, LocalStorage)
    assert store.root == Path(DEFAULT_ROOT)


def test_local_section_builds_a_working_store(tmp_path: Path) -> None:
    store = open_storage({"type": "local", "path": str(tmp_path / "s")})
    store.write("a/b", b"x")
    assert (tmp_path / "s" / "a" / "b").read_bytes() == b"x"


def test_typo_in_a_key_names_it_and_suggests_the_known_one() -> None:
    with pytest.raises(ConfigError) as info:
        open_storage({"type": "local", "pth": "/x"})
    assert info.value.problems == ["storage.pth: unknown key (did you mean 'path'?)"]


def test_typo_in_the_type_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"storage\.type: .*\(got 'S3'\) \(did you mean 's3'\?\)"):
        open_storage({"type": "S3"})
    with pytest.raises(ConfigError, match=r"\(got 'locl'\) \(did you mean 'local'\?\)"):
        open_storage({"type": "locl"})


def test_every_bad_key_is_reported_at_once() -> None:
    section = {
        "type": "s3",
        "s3": {"bucekt": "b", "path_style": "yes", "endpoint_url": "ftp://minio:9000"},
        "spool": {"max_bytes": -1},
    }
    with pytest.raises(ConfigError) as info:
        open_storage(section, where="pressured.storage")
    keys = [problem.split(":", 1)[0] for problem in info.value.problems]
    assert keys == [
        "pressured.storage.s3.bucekt",
        "pressured.storage.s3.bucket",
        "pressured.storage.s3.endpoint_url",
        "pressured.storage.s3.path_style",
        "pressured.storage.spool.max_bytes",
    ]
    assert "did you mean 'bucket'?" in info.value.problems[0]
    assert "required when storage.type is s3" in info.value.problems[1]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"type": "s3", "s3": {"bucket": "s3://logs/heaps"}}, "give the bucket name only"),
        ({"type": "s3", "s3": {"bucket": ""}}, "must be a bucket name"),
        ({"type": "s3", "s3": {"bucket": "b-1", "prefix": "a/../b"}}, "storage.s3.prefix"),
        ({"type": "s3", "s3": {"bucket": "b-1", "region": 5}}, "storage.s3.region"),
        ({"s3": "bucket"}, "storage.s3: expected a mapping"),
        ({"spool": {"max_bytes": True}}, "storage.spool.max_bytes"),
        ({"path": ""}, "storage.path: must be a non-empty string"),
        ("local", "storage: expected a mapping"),
    ],
)
def test_bad_values_name_their_key(section: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_storage_config(section)  # type: ignore[arg-type]


def test_s3_section_is_parsed() -> None:
    config = parse_storage_config(
        {
            "type": "s3",
            "s3": {
                "bucket": "dumps",
                "prefix": "/prod/",
                "path_style": True,
                "endpoint_url": "http://minio:9000",
                "region": "eu-west-1",
            },
            "spool": {"path": "/var/spool/p", "max_bytes": 4096},
        }
    )
    assert config.type == "s3"
    assert config.s3 == S3Config("dumps", "eu-west-1", "prod", "http://minio:9000", True)
    assert (config.spool_path, config.spool_max_bytes) == ("/var/spool/p", 4096)


MB = 1 << 20


@pytest.mark.parametrize(
    "section",
    [
        {"type": "s3", "s3": {"bucket": "b" * MB}},
        {"type": "s3", "s3": {"bucket": "s3://b/" + "p" * MB}},
        {"type": "s3", "s3": {"bucket": "ok-bucket", "prefix": "../" + "p" * MB}},
        {"type": "s3", "s3": {"bucket": "ok-bucket", "endpoint_url": "ftp://" + "e" * MB}},
        {"type": "s3", "s3": {"bucket": "ok-bucket", "region": ["r"] * MB}},
        {"type": "t" * MB},
        {"type": "local", "k" * MB: 1},
        {"type": "local", "spool": {"max_bytes": "m" * MB}},
    ],
    ids=lambda section: repr(section)[:40],
)
def test_storage_config_errors_quote_a_bad_value_briefly(section: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_storage_config(section)
    (problem,) = info.value.problems
    assert len(problem) < 500, problem[:600]
    assert "characters)" in problem


def test_storage_errors_quote_a_huge_key_briefly(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    for key in ("k" * MB, "/" + "k" * MB, "a/" * MB + "..", f"d/{'k' * MB}/.pressured-tmp-x"):
        with pytest.raises(StorageError) as info:
            store.write(key, b"x")
        assert len(str(info.value)) < 500, str(info.value)[:600]
        assert "characters)" in str(info.value)
