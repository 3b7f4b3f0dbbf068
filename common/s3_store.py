"""The S3 backend of the artifact store (MinIO, or any S3-compatible server), with the ``minio`` client.

Layout in the bucket: a file artifact is one object at its key, carrying its SHA-256 in
``x-amz-meta-sha256``; a folder artifact (a model) is one object per file under
``<key>/`` plus a folder index ``<key>/.montessori-folder.json`` written LAST, listing every
file with its digest: readers only see a folder once its index exists, so a half-uploaded
folder is never visible. Reads download into a node-local cache keyed by content digest
(a model is downloaded once per node, not per job) and verify every digest, failing
loudly on a mismatch. Credentials never appear in URIs, messages or logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from common.artifacts import ArtifactRef, ArtifactStore, sha256_file, sha256_tree, validate_key
from common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

FOLDER_INDEX = ".montessori-folder.json"
PART_SIZE = 16 * 1024 * 1024  # multipart above this size (checkpoints)
_AUTH_ERRORS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidSecretKey"}


class S3ArtifactStore(ArtifactStore):
    """Artifacts as objects in one bucket."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        cache_dir: str | Path,
        create_bucket: bool = True,
        retries: int = 3,
        timeout: float = 10.0,
    ):
        import urllib3
        from minio import Minio

        from common.envs import Env

        if not endpoint:
            raise InvalidArgument("is required for an s3:// store (host:port)", field="MINIO_ENDPOINT")
        self.endpoint, self.bucket, self.secure = endpoint, bucket, secure
        self.cache = Path(cache_dir)
        self.cache.mkdir(parents=True, exist_ok=True)
        self._paths: dict[str, ArtifactRef] = {}  # local cache path -> artifact it holds (for manifests)
        env = Env.read()
        ca_file = env.s3_ca_file if secure else ""
        # A port-forward reaches the store at 127.0.0.1, which its certificate does not name: check the name it does.
        server_name = env.s3_server_name if secure else ""
        if ca_file and not Path(ca_file).is_file():
            raise InvalidArgument(f"{ca_file} is not a file", field="MINIO_CA_FILE")
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout, read=max(timeout, 120.0)),
            maxsize=8,
            retries=urllib3.Retry(total=retries, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504)),
            **({"cert_reqs": "CERT_REQUIRED", "ca_certs": ca_file} if ca_file else {}),
            **({"assert_hostname": server_name, "server_hostname": server_name} if server_name else {}),
        )
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, http_client=http)
        exists = self._call(lambda: self.client.bucket_exists(bucket), what=f"bucket {bucket}")
        if not exists:
            if not create_bucket:
                raise NotFound(f"bucket {bucket!r} does not exist on {endpoint}", field="bucket")
            self._call(lambda: self.client.make_bucket(bucket), what=f"bucket {bucket}")

    def __repr__(self) -> str:
        return f"S3ArtifactStore(endpoint={self.endpoint!r}, bucket={self.bucket!r})"

    # -- errors ----------------------------------------------------------------------------

    def _call(self, operation, *, what: str):
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        try:
            return operation()
        except S3Error as err:
            if err.code in _AUTH_ERRORS:
                raise FailedPrecondition(
                    f"S3 server {self.endpoint} rejected the credentials ({err.code})", field="MINIO_ACCESS_KEY"
                ) from None
            if err.code in ("NoSuchKey", "NoSuchBucket"):
                raise NotFound(f"no artifact at {what}", field="uri") from None
            raise FailedPrecondition(f"S3 error on {what}: {err.code}", field="uri") from None
        except (HTTPError, OSError) as err:
            raise Unavailable(f"S3 server {self.endpoint} unreachable after retries ({type(err).__name__})") from None

    # -- addressing --------------------------------------------------------------------------

    @property
    def root_uri(self) -> str:
        return f"s3://{self.bucket}"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{validate_key(key)}"

    def key_of(self, uri: str) -> str:
        prefix = f"s3://{self.bucket}/"
        if not uri.startswith(prefix):
            raise InvalidArgument(f"{uri!r} is not inside the artifact store s3://{self.bucket}", field="uri")
        return validate_key(uri[len(prefix) :], field="uri")

    def _stat(self, name: str):
        """The object's metadata, or ``None`` when there is no such object."""
        try:
            return self._call(lambda: self.client.stat_object(self.bucket, name), what=self.uri(name))
        except NotFound:
            return None

    def recorded_digest(self, key: str) -> str:
        key = validate_key(key)
        stat = self._stat(key) or self._stat(f"{key}/{FOLDER_INDEX}")  # a file, else a folder's index
        if stat is None:
            raise NotFound(f"no artifact at {self.uri(key)}", field="uri")
        digest = {k.lower(): v for k, v in stat.metadata.items()}.get("x-amz-meta-sha256", "")
        if digest:
            return digest
        raise FailedPrecondition(f"{self.uri(key)} has no recorded sha256 (not published by montessori)", field="uri")

    def object_sha256(self, name: str) -> str:
        """SHA-256 of one object as stored, read as a stream (nothing written to disk)."""

        def read() -> str:
            digest = hashlib.sha256()
            response = self.client.get_object(self.bucket, name)
            try:
                for block in response.stream(1 << 20):
                    digest.update(block)
            finally:
                response.close()
                response.release_conn()
            return digest.hexdigest()

        return self._call(read, what=self.uri(name))

    def exists(self, key: str) -> bool:
        key = validate_key(key)
        return self._stat(key) is not None or self._stat(f"{key}/{FOLDER_INDEX}") is not None

    # -- writing -----------------------------------------------------------------------------

    def _put(self, name: str, source: Path, digest: str) -> None:
        self._call(
            lambda: self.client.fput_object(
                self.bucket, name, str(source), metadata={"sha256": digest}, part_size=PART_SIZE
            ),
            what=self.uri(name),
        )

    def put_file(self, key: str, source: Path) -> ArtifactRef:
        key = validate_key(key)
        digest = sha256_file(source)
        self._put(key, source, digest)  # one PUT: S3 makes it visible whole or not at all
        return ArtifactRef(self.uri(key), digest)

    def create_bytes(self, key: str, data: bytes) -> bool:
        """A conditional PUT (``If-None-Match: *``, S3's create-if-absent): 412 PreconditionFailed means the key
        exists. A server that ignores the header (nanio; MinIO before its conditional writes) overwrites instead:
        there, a key that exists is refused by a HEAD first, and the object is read back, a create whose bytes
        are not there having lost a race (the window left is two PUTs between one's HEAD and the other's read;
        docs/operations-cluster.md, "Write-once")."""

        key = validate_key(key)
        if self._stat(key) is not None:  # the common case, one HEAD; the conditional PUT decides a race
            return False
        digest = hashlib.sha256(data).hexdigest()
        headers = {
            "If-None-Match": "*",
            "Content-Type": "application/octet-stream",
            "x-amz-meta-sha256": digest,
        }
        try:
            # minio-py's public put_object turns unknown headers into user metadata (x-amz-meta-if-none-match), so
            # the conditional PUT goes through its one-request primitive (a small record, never multipart).
            self._call(lambda: self.client._put_object(self.bucket, key, data, headers=headers), what=self.uri(key))
        except FailedPrecondition as err:
            if "PreconditionFailed" in err.message:
                return False
            raise
        return self.get_bytes(key) == data

    def put_dir(self, key: str, source: Path, *, move: bool = False) -> ArtifactRef:
        key = validate_key(key)
        files = sorted(p for p in Path(source).rglob("*") if not p.is_dir())  # a dangling link fails the upload
        index = {"files": {}}
        for path in files:
            relative = path.relative_to(source).as_posix()
            digest = sha256_file(path)
            self._put(f"{key}/{relative}", path, digest)
            index["files"][relative] = digest
        index["sha256"] = sha256_tree(Path(source))
        blob = json.dumps(index, sort_keys=True).encode()
        # The index goes last: it is what makes the folder visible.
        self._call(
            lambda: self.client.put_object(
                self.bucket, f"{key}/{FOLDER_INDEX}", io.BytesIO(blob), len(blob), metadata={"sha256": index["sha256"]}
            ),
            what=self.uri(key),
        )
        if move:
            shutil.rmtree(source, ignore_errors=True)
        return ArtifactRef(self.uri(key), index["sha256"])

    # -- reading -----------------------------------------------------------------------------

    def _download(self, name: str, target: Path, expected: str) -> None:
        staging = target.with_name(f".{target.name}.part-{uuid.uuid4().hex}")
        staging.parent.mkdir(parents=True, exist_ok=True)
        self._call(lambda: self.client.fget_object(self.bucket, name, str(staging)), what=self.uri(name))
        actual = sha256_file(staging)
        if actual != expected:
            staging.unlink(missing_ok=True)
            raise FailedPrecondition(
                f"digest mismatch for {self.uri(name)}: expected {expected[:12]}, got {actual[:12]} (corrupted object)",
                field="uri",
            )
        os.replace(staging, target)

    def local_path(self, key: str) -> Path:
        key = validate_key(key)
        stat = self._stat(key)
        if stat is not None:
            digest = stat.metadata.get("x-amz-meta-sha256") or stat.metadata.get("X-Amz-Meta-Sha256") or ""
            if not digest:
                raise FailedPrecondition(f"{self.uri(key)} has no recorded sha256", field="uri")
            target = self.cache / "files" / digest / Path(key).name
            if not (target.is_file() and sha256_file(target) == digest):
                self._download(key, target, digest)
            self._paths[str(target)] = ArtifactRef(self.uri(key), digest)
            return target
        index_stat = self._stat(f"{key}/{FOLDER_INDEX}")
        if index_stat is None:
            raise NotFound(f"no artifact at {self.uri(key)}", field="uri")
        response = self._call(lambda: self.client.get_object(self.bucket, f"{key}/{FOLDER_INDEX}"), what=self.uri(key))
        try:
            index = json.loads(response.read())
        finally:
            response.close()
            response.release_conn()
        target = self.cache / "folders" / index["sha256"] / Path(key).name
        if not target.is_dir():
            with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
                staging = Path(tmp) / "folder"
                for relative, digest in index["files"].items():
                    self._download(f"{key}/{relative}", staging / relative, digest)
                if sha256_tree(staging) != index["sha256"]:
                    raise FailedPrecondition(f"digest mismatch for folder {self.uri(key)}", field="uri")
                target.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):  # another job on this node cached it first
                    os.replace(staging, target)
        self._paths[str(target)] = ArtifactRef(self.uri(key), index["sha256"])
        return target

    def describe(self, path: Path) -> dict[str, str]:
        ref = self._paths.get(str(path))
        return ref.to_dict() if ref else super().describe(path)

    def artifact_of(self, path: Path) -> ArtifactRef | None:
        return self._paths.get(str(path))

    def list(self, prefix: str = "") -> list[str]:
        prefix = validate_key(prefix) + "/" if prefix else ""
        objects = self._call(
            lambda: list(self.client.list_objects(self.bucket, prefix=prefix, recursive=True)),
            what=f"{self.root_uri}/{prefix}",
        )
        return sorted(o.object_name for o in objects if not o.object_name.endswith(FOLDER_INDEX))

    def delete(self, key: str) -> None:
        key = validate_key(key)
        names = (
            [key]
            if self._stat(key) is not None
            else [f"{key}/{n}" for n in self._folder_files(key)] + [f"{key}/{FOLDER_INDEX}"]
        )
        for name in names:
            self._call(lambda n=name: self.client.remove_object(self.bucket, n), what=self.uri(name))

    def _folder_files(self, key: str) -> list[str]:
        return [o.removeprefix(f"{key}/") for o in self.list(key)]
