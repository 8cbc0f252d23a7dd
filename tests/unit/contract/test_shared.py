"""MODEL_STORE=redis: versions published into one model directory reach another through a real
Redis, checked by checksum, with rollback and pruning seen by both."""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass

import pytest

from worker.contract.errors import CheckpointError
from worker.contract.settings import Settings, use_host_environment
from worker.contract.shared import CHUNK_BYTES
from worker.contract.store import named_model_dir


@dataclass(frozen=True)
class Spec:
    classes: tuple[str, ...] = ("Spot",)
    version: str = ""
    created: float = 0.0


def writer(size: int):
    """A ``save`` that writes ``size`` random bytes (more than one Redis chunk when large)."""

    def save(path, spec) -> None:
        path.write_bytes(os.urandom(size))

    return save


@pytest.fixture
def hosts(redis_url, tmp_path):
    """Two model directories of the same project, as on two hosts, sharing one Redis."""
    name = uuid.uuid4().hex[:8]  # the session's Redis is shared between tests
    return tuple(named_model_dir(tmp_path / host, name, redis_url, "redis") for host in ("a", "b"))


def test_a_version_published_on_one_host_is_served_from_the_other(hosts):
    a, b = hosts
    spec = a.publish(Spec(), writer(CHUNK_BYTES + 1000))
    assert b.current_version() == spec.version == "v0001"
    assert not b.path("v0001").exists()  # nothing until it is needed
    path = b.fetch("v0001")
    assert path.read_bytes() == a.path("v0001").read_bytes()
    assert b.info("v0001")["classes"] == ["Spot"]
    assert b.fetch("v0001") == path  # the copy is reused


def test_a_download_that_fails_its_checksum_leaves_no_file(hosts):
    a, b = hosts
    a.publish(Spec(), writer(5000))
    a.shared.redis.lset(a.shared.file_key("v0001"), 0, b"not the weights")
    with pytest.raises(CheckpointError, match="sha256"):
        b.fetch("v0001")
    assert not b.path("v0001").exists()


def test_rollback_and_pruning_reach_every_host(hosts):
    a, b = hosts
    for _ in range(3):
        a.publish(Spec(), writer(3000))
    b.fetch("v0001")
    b.fetch("v0003")
    b.set_current("v0001", check=lambda path: None)  # a rollback on the other host
    assert a.current_version() == "v0001"
    assert a.prune(1) == ["v0002"]  # never the current one
    assert b.versions() == a.versions() == ["v0001", "v0003"]
    a.publish(Spec(), writer(3000))
    a.prune(1)  # v0003 goes everywhere; v0004 is current now
    assert sorted(a.shared.kept()) == ["v0004"]
    b.fetch("v0004")
    assert not b.path("v0003").exists() and not b.path("v0001").exists()
    assert b.versions() == ["v0004"]


def test_a_prune_on_one_host_spares_what_another_just_rolled_back_to(hosts, monkeypatch):
    a, b = hosts
    for _ in range(3):
        a.publish(Spec(), writer(3000))
    monkeypatch.setattr(a, "current_version", lambda: "v0003")  # read before b's rollback
    b.set_current("v0001", check=lambda path: None)
    assert a.prune(1) == ["v0002"]  # v0001 became current meanwhile: kept
    assert sorted(a.shared.kept()) == ["v0001", "v0003"] and b.current_version() == "v0001"
    assert b.fetch("v0001").is_file()


def test_a_rollback_to_a_version_pruned_meanwhile_is_refused_and_changes_nothing(hosts):
    a, b = hosts
    for _ in range(2):
        a.publish(Spec(), writer(3000))
    b.fetch("v0001")  # b still has its copy when a prunes it
    a.prune(1)
    with pytest.raises(CheckpointError, match="pruned"):
        b.shared.set_current("v0001")
    assert a.current_version() == b.current_version() == "v0002"


def test_an_upload_redis_refuses_leaves_nothing_behind(tmp_path):
    """Redis out of memory while a version's pieces go in: no partial file, no listing."""
    from redis import Redis
    from redis.exceptions import ResponseError

    from tests.conftest import free_port, start_redis

    server, url = start_redis(free_port(), tmp_path)
    try:
        redis = Redis.from_url(url)
        redis.config_set("maxmemory-policy", "noeviction")
        redis.config_set("maxmemory", redis.info("memory")["used_memory"] + CHUNK_BYTES * 2)
        host = named_model_dir(tmp_path / "a", "p", url, "redis")
        with pytest.raises(ResponseError, match="maxmemory"):
            host.publish(Spec(), writer(CHUNK_BYTES * 4))
        assert host.shared.kept() == {} and host.shared.current() is None
        assert redis.keys("camsam:models:*") == []
        redis.config_set("maxmemory", 0)
        assert host.publish(Spec(), writer(3000)).version == "v0002"
        assert named_model_dir(tmp_path / "b", "p", url, "redis").fetch("v0002").is_file()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_version_kept_on_one_disk_only_is_shared_when_it_becomes_current(hosts, tmp_path):
    a, b = hosts
    a.versions_dir.mkdir(parents=True)
    a.path("v0007").write_bytes(b"trained before MODEL_STORE=redis")
    a.set_current("v0007", check=lambda path: None)
    assert b.current_version() == "v0007"
    digest = hashlib.sha256(b.fetch("v0007").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(b"trained before MODEL_STORE=redis").hexdigest()


def test_a_redis_store_needs_redis_and_a_known_name(tmp_path):
    with pytest.raises(ValueError, match="REDIS_URL"):
        named_model_dir(tmp_path, "3", "", "redis")
    with pytest.raises(ValueError, match="MODEL_STORE"):
        Settings(model_store="nfs")


def test_a_workers_own_model_dir_wins_over_the_one_a_job_carries():
    try:
        assert use_host_environment({"MODEL_DIR": "/cache"}) == {"model_dir": "/cache"}
        assert Settings.from_payload({"model_dir": "/models"}).model_dir == "/cache"
    finally:
        use_host_environment({})
    assert Settings.from_payload({"model_dir": "/models"}).model_dir == "/models"
