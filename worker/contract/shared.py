"""Model versions kept in Redis, so that every host serves what a trainer on any host published.

With ``MODEL_STORE=redis`` a published version's file goes into Redis beside its checksum, and
each worker keeps ``MODEL_DIR`` as a cache of it: no filesystem is shared between hosts. For a
model named ``<name>`` (a project id, or ``-`` for the one model in ``MODEL_DIR`` itself) Redis
holds::

    camsam:models:<name>:current          the current version (vNNNN)
    camsam:models:<name>:kept             hash: version -> {"sha256", "size", "chunks", "info"}
    camsam:models:<name>:file:<version>   list: the file in CHUNK_BYTES pieces

A version is listed in ``kept`` only once its file is complete (renamed into place and listed in
one transaction), and unlisted before its file goes, so a reader that finds a version listed
finds all of it; what it downloads it checks against the checksum before the file takes its
place on disk. Pointing at a version and dropping one watch each other: a host pruning cannot
drop the version another host has just rolled back to, nor can a rollback point at one just
dropped.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

from worker.contract.errors import CheckpointError

# One Redis reply each: few, and quick. Just under 4 MiB: a piece of exactly 4 MiB (plus its
# header) takes the allocator's 5 MiB size, and a version 22% more memory (measured: 6% here).
CHUNK_BYTES = 4_000_000
UPLOAD_SECONDS = 3600  # the pieces of an upload that died halfway are dropped after this


class SharedModels:
    """One model's versions in Redis: what is kept, which is current, and their files."""

    def __init__(self, redis, name: str) -> None:
        self.redis = redis
        self.name = name or "-"
        self.prefix = f"camsam:models:{self.name}:"

    def current(self) -> str | None:
        value = self.redis.get(self.prefix + "current")
        return value.decode(errors="replace") if value else None

    def set_current(self, version: str) -> None:
        """Raises: CheckpointError when Redis no longer keeps ``version`` (another host pruned
        it meanwhile): the current version then stays."""

        def point(pipe) -> None:
            if not pipe.hexists(self.prefix + "kept", version):
                raise CheckpointError(f"version {version} of model {self.name} was pruned")
            pipe.multi()
            pipe.set(self.prefix + "current", version)

        self.redis.transaction(point, self.prefix + "kept")

    def kept(self) -> dict[str, dict]:
        """Every version Redis keeps, with its checksum, size and spec."""
        raw = self.redis.hgetall(self.prefix + "kept")
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def meta(self, version: str) -> dict | None:
        raw = self.redis.hget(self.prefix + "kept", version)
        return json.loads(raw) if raw else None

    def upload(self, version: str, path: Path, info: dict | None) -> str:
        """Put ``version``'s file into Redis and list it; returns its sha256. The pieces go to
        a key of their own first, and only a complete file is renamed into place and listed,
        in one transaction; a failed upload leaves nothing behind."""
        data = Path(path).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        pieces = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
        staging = f"{self.prefix}upload:{uuid.uuid4().hex}"
        meta = {"sha256": digest, "size": len(data), "chunks": len(pieces), "info": info}
        try:
            pipe = self.redis.pipeline(transaction=False)
            for piece in pieces:
                pipe.rpush(staging, piece)
            pipe.expire(staging, UPLOAD_SECONDS)
            pipe.execute()  # raises the first error (Redis out of memory), after all ran
            if self.redis.llen(staging) != len(pieces):
                raise CheckpointError(f"version {version} did not reach Redis whole")
            pipe = self.redis.pipeline()
            pipe.rename(staging, self.file_key(version))
            pipe.persist(self.file_key(version))
            pipe.hset(self.prefix + "kept", version, json.dumps(meta))
            pipe.execute()
        except BaseException:
            try:
                self.redis.delete(staging)  # else it expires within UPLOAD_SECONDS
            except Exception:  # noqa: BLE001 (Redis gone: the first error is the one to see)
                pass
            raise
        return digest

    def download(self, version: str, write) -> str:
        """Stream ``version``'s file into ``write`` (a binary file's write), checking it;
        returns its sha256.

        Raises:
            CheckpointError: Redis does not keep the version (pruned meanwhile), or what came
                differs from its checksum.
        """
        meta = self.meta(version)
        if meta is None:
            raise CheckpointError(f"version {version} of model {self.name} is not in Redis")
        digest, size = hashlib.sha256(), 0
        for index in range(meta["chunks"]):
            piece = self.redis.lindex(self.file_key(version), index)
            if piece is None:
                raise CheckpointError(f"version {version} of model {self.name} was pruned")
            digest.update(piece)
            size += len(piece)
            write(piece)
        if digest.hexdigest() != meta["sha256"] or size != meta["size"]:
            raise CheckpointError(
                f"version {version} of model {self.name} came from Redis with sha256 "
                f"{digest.hexdigest()[:12]}, not {meta['sha256'][:12]}: publish it again"
            )
        return meta["sha256"]

    def drop(self, version: str) -> None:
        """Unlist ``version``, then delete its file.

        Raises:
            CheckpointError: it is current (another host rolled back to it meanwhile).
        """

        def remove(pipe) -> None:
            current = pipe.get(self.prefix + "current")
            if current is not None and current.decode(errors="replace") == version:
                raise CheckpointError(f"{version} is current: roll back before discarding it")
            pipe.multi()
            pipe.hdel(self.prefix + "kept", version)
            pipe.delete(self.file_key(version))

        self.redis.transaction(remove, self.prefix + "current")

    def file_key(self, version: str) -> str:
        return f"{self.prefix}file:{version}"
