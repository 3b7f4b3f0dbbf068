"""The artifact store: every stage reads and writes through this interface.

Artifacts are addressed by *keys* (``loops/<loop-id>/iter-1/scores/scores.jsonl``)
inside one store; ``uri(key)`` gives the full address (``file:///...`` here,
``s3://bucket/...`` for the S3 backend). Every write is atomic (written beside the
target, then renamed into place) and returns an :class:`ArtifactRef` with the
content's SHA-256, so readers never see half-written data and manifests can pin
exactly what a stage consumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.errors import FailedPrecondition, InvalidArgument, NotFound, printable

#: Matched with ``fullmatch``: ``match`` with ``$`` also accepts a trailing newline ("a\n").
_KEY_RE = re.compile(r"[A-Za-z0-9._=+-]+(/[A-Za-z0-9._=+-]+)*")


@dataclass(frozen=True)
class ArtifactRef:
    """A published artifact: where it is and what its content hashes to."""

    uri: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


#: Longest key segment (a file name on every filesystem the local store may sit on) and longest key (S3: 1024).
MAX_SEGMENT, MAX_KEY = 255, 1024


def validate_key(key: str, *, field: str = "key") -> str:
    """Reject absolute keys, ``..`` segments, characters outside a safe set and over-long keys or segments."""
    if len(key) > MAX_KEY or any(len(segment) > MAX_SEGMENT for segment in key.split("/")):
        raise InvalidArgument(
            f"keys are at most {MAX_KEY} characters, {MAX_SEGMENT} between slashes (got {len(key)} characters)",
            field=field,
        )
    if not key or key.startswith("/") or not _KEY_RE.fullmatch(key) or any(p in ("..", ".") for p in key.split("/")):
        raise InvalidArgument(
            f"invalid artifact key {printable(key, limit=200)!r} (relative, no '..', letters/digits/._=+- only)",
            field=field,
        )
    return key


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(root: Path) -> str:
    """Digest of a folder: SHA-256 over its sorted (relative path, file digest) list."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


class ArtifactStore(ABC):
    """Interface of an artifact store. Backends: :class:`LocalArtifactStore` (S3 later)."""

    @property
    @abstractmethod
    def root_uri(self) -> str:
        """Address of the store itself (what ``open_store`` takes)."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Full address of ``key`` in this store."""

    @abstractmethod
    def key_of(self, uri: str) -> str:
        """Inverse of :meth:`uri`; raises :class:`InvalidArgument` for a URI outside this store."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an artifact (file or folder) is published under ``key``."""

    @abstractmethod
    def put_file(self, key: str, source: Path) -> ArtifactRef:
        """Publish a local file under ``key`` atomically."""

    @abstractmethod
    def put_dir(self, key: str, source: Path, *, move: bool = False) -> ArtifactRef:
        """Publish a local folder (e.g. an HF model folder) under ``key`` atomically.

        ``move=True`` lets the store consume ``source`` (a scratch folder) instead of copying it.
        """

    @abstractmethod
    def local_path(self, key: str) -> Path:
        """A local, read-only path holding the artifact (the file itself here; a cache for remote stores)."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys of the published files under ``prefix``, sorted."""

    @abstractmethod
    def create_bytes(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` only if nothing is there, in one step: True if this call created it, False if
        the key already existed (nothing written). Of two concurrent creates, exactly one gets True."""

    # Convenience layer shared by all backends.

    def create_json(self, key: str, obj: Any) -> bool:
        """:meth:`create_bytes` of ``obj`` as JSON (the layout of :meth:`put_json`)."""
        return self.create_bytes(key, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def put_bytes(self, key: str, data: bytes) -> ArtifactRef:
        with tempfile.TemporaryDirectory(prefix="montessori-put-") as tmp:
            path = Path(tmp) / "blob"
            path.write_bytes(data)
            return self.put_file(key, path)

    def put_json(self, key: str, obj: Any) -> ArtifactRef:
        return self.put_bytes(key, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def put_jsonl(self, key: str, rows: Iterable[dict]) -> ArtifactRef:
        return self.put_bytes(key, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())

    def get_bytes(self, key: str) -> bytes:
        return self.local_path(key).read_bytes()

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def get_jsonl(self, key: str) -> list[dict]:
        from common.jsonl import read_jsonl

        return read_jsonl(self.local_path(key), label=self.uri(key), allow_empty=True)

    def digest(self, key: str) -> str:
        path = self.local_path(key)
        return sha256_tree(path) if path.is_dir() else sha256_file(path)

    def recorded_digest(self, key: str) -> str:
        """The digest recorded when ``key`` was published, without fetching it where the backend can (S3 reads
        its metadata, so a controller never downloads a model the workers load); here the verified digest."""
        return self.digest(key)

    def ref(self, key: str) -> ArtifactRef:
        return ArtifactRef(uri=self.uri(key), sha256=self.digest(key))

    def describe(self, path: Path) -> dict[str, str]:
        """URI and digest of a local input (an artifact's local copy, or a plain file such as a data set)."""
        path = Path(path)
        return {"uri": path.resolve().as_uri(), "sha256": sha256_tree(path) if path.is_dir() else sha256_file(path)}

    def artifact_of(self, path: Path) -> ArtifactRef | None:
        """The artifact whose local copy is ``path``, or ``None`` for a path outside the store."""
        return None

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the artifact (file or folder) at ``key``."""


class LocalArtifactStore(ArtifactStore):
    """Artifacts as files under a root folder (the embedded default)."""

    def __init__(self, root: str | Path):
        # The root is made by the first write: a loop refused before any work leaves no folder behind.
        self.root = Path(root).resolve()
        self._made_root = not self.root.exists()
        self._verified: dict[str, tuple] = {}

    @property
    def root_uri(self) -> str:
        return self.root.as_uri()

    def uri(self, key: str) -> str:
        return (self.root / validate_key(key)).as_uri()

    def key_of(self, uri: str) -> str:
        path = Path(uri.removeprefix("file://")).resolve() if uri.startswith("file://") else None
        if path is None or not path.is_relative_to(self.root):
            raise InvalidArgument(f"{uri!r} is not inside the artifact store {self.root.as_uri()}", field="uri")
        return validate_key(path.relative_to(self.root).as_posix(), field="uri")

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def put_file(self, key: str, source: Path) -> ArtifactRef:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
        try:
            shutil.copyfile(source, staging)
            digest = sha256_file(staging)
            self._expect_digest(target, digest)
            os.replace(staging, target)  # atomic on POSIX: readers see old or new, never half
        finally:
            staging.unlink(missing_ok=True)
        self._record_digest(target, digest)
        return ArtifactRef(uri=target.as_uri(), sha256=digest)

    def create_bytes(self, key: str, data: bytes) -> bool:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
        try:
            staging.write_bytes(data)
            digest = sha256_file(staging)
            try:
                os.link(staging, target)  # atomic and exclusive: fails if the key exists, never half-written
            except FileExistsError:
                return False
        finally:
            staging.unlink(missing_ok=True)
        # After the link (a sidecar written first would be the existing artifact's when the create loses); a
        # crash in between leaves an artifact without a sidecar, which reads as unchecked, not as corrupted.
        self._record_digest(target, digest)
        return True

    def put_dir(self, key: str, source: Path, *, move: bool = False) -> ArtifactRef:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
        try:
            # Checkpoints are large: moving a scratch folder on the same disk is a rename, not a copy.
            (shutil.move if move else shutil.copytree)(str(source), str(staging))
            digest = sha256_tree(staging)
            self._expect_digest(target, digest)
            if target.exists():
                retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
                os.replace(target, retired)
                os.replace(staging, target)
                shutil.rmtree(retired)
            else:
                os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._record_digest(target, digest)
        return ArtifactRef(uri=target.as_uri(), sha256=digest)

    # Digests are kept beside each artifact (``.<name>.sha256``) and checked on read; a check
    # is remembered per (size, mtime) so a model read many times is hashed once per process.
    # An artifact and its sidecar cannot be replaced in one step, so a write first lists the new digest beside
    # the current one, then replaces the artifact, then keeps only the new digest: a crash at any point leaves an
    # artifact that verifies (old or new), never one its sidecar calls corrupted.

    @staticmethod
    def _sidecar(target: Path) -> Path:
        return target.with_name(f".{target.name}.sha256")

    def _write_sidecar(self, target: Path, digests: list[str]) -> None:
        sidecar = self._sidecar(target)
        staging = sidecar.with_name(f"{sidecar.name}.tmp-{uuid.uuid4().hex}")
        staging.write_text("\n".join(digests))
        os.replace(staging, sidecar)

    def _expect_digest(self, target: Path, digest: str) -> None:
        """Before ``target`` is replaced: its sidecar accepts the new digest as well as the current one."""
        sidecar = self._sidecar(target)
        current = sidecar.read_text().split() if sidecar.is_file() and target.exists() else []
        self._write_sidecar(target, [digest, *current[:1]])

    def _record_digest(self, target: Path, digest: str) -> None:
        self._write_sidecar(target, [digest])
        self._verified[str(target)] = (self._stamp(target), digest)

    @staticmethod
    def _stamp(path: Path) -> tuple:
        if path.is_dir():
            return tuple(
                sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file())
            )
        stat = path.stat()
        return (stat.st_size, stat.st_mtime_ns)

    def _verify(self, path: Path) -> None:
        sidecar = self._sidecar(path)
        if not sidecar.is_file():
            return  # written by an older version or by hand: nothing to check against
        expected = sidecar.read_text().split()  # two digests only while a write is in progress (or crashed)
        stamp = self._stamp(path)
        remembered = self._verified.get(str(path))
        if remembered is not None and remembered[0] == stamp and remembered[1] in expected:
            return
        actual = sha256_tree(path) if path.is_dir() else sha256_file(path)
        if actual not in expected:
            raise FailedPrecondition(
                f"digest mismatch for {path.as_uri()}: expected {expected[0][:12] if expected else '(none)'}, "
                f"got {actual[:12]} (corrupted artifact)",
                field="uri",
            )
        self._verified[str(path)] = (stamp, actual)

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.exists():
            raise NotFound(f"no artifact at {path.as_uri()}", field="uri")
        self._verify(path)
        return path

    def artifact_of(self, path: Path) -> ArtifactRef | None:
        path = Path(path).resolve()
        if not path.is_relative_to(self.root) or not path.exists():
            return None
        return ArtifactRef(path.as_uri(), sha256_tree(path) if path.is_dir() else sha256_file(path))

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        self._sidecar(path).unlink(missing_ok=True)
        # Folders the deletion left empty go too (the root only if this store made it).
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root) and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
        if parent == self.root and self._made_root and self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        )


def open_store(uri: str) -> ArtifactStore:
    """The store named by ``uri``: a path or ``file://`` URI (local folder) or ``s3://bucket`` (endpoint and
    credentials from ``MINIO_ENDPOINT`` / ``MINIO_ACCESS_KEY`` / ``MINIO_SECRET_KEY`` / ``MINIO_SECURE``)."""
    if uri.startswith("file://"):
        return LocalArtifactStore(uri.removeprefix("file://"))
    if uri.startswith("s3://"):
        from common.envs import Env
        from common.s3_store import S3ArtifactStore

        bucket = uri.removeprefix("s3://").strip("/")
        if not bucket or "/" in bucket:
            raise InvalidArgument(f"expected s3://<bucket>, got {uri!r}", field="artifacts")
        env = Env.read()
        return S3ArtifactStore(
            endpoint=env.s3_endpoint,
            access_key=env.s3_access_key,
            secret_key=env.s3_secret_key,
            bucket=bucket,
            secure=env.s3_secure,
            cache_dir=env.cache_dir,
        )
    if "://" in uri:
        raise InvalidArgument(
            f"unsupported artifact store URI {uri!r} (use a path, file:// or s3://)", field="artifacts"
        )
    return LocalArtifactStore(uri)
