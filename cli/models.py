"""``montessori models push <folder>``: publish a model folder in the artifact store, content-addressed.

The model lands under ``models/<name>/<sha256 of the folder>`` (the digest of
:func:`common.artifacts.sha256_tree`), so a key never changes meaning: a second push of the same folder
uploads nothing and prints the same URI, and a changed folder gets a new key. The upload is verified
before the URI is printed (every object read back and hashed); a copy that does not hash to the folder's
digest is removed and refused. A run config names the printed URI in ``models.student`` /
``models.teacher``; the workers download it once per node into their cache (``MONTESSORI_CACHE_DIR``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from common.artifacts import ArtifactRef, ArtifactStore, sha256_file, sha256_tree
from common.errors import FailedPrecondition, InvalidArgument, NotFound

#: A model's name in its key (one key segment; no leading dot: hidden segments are never listed).
_NAME = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9._=+-]{0,99}")
#: Where pushed models live in the store.
MODELS_PREFIX = "models"


@dataclass(frozen=True)
class PushResult:
    """A pushed model: its artifact (URI + digest) and whether this push uploaded anything."""

    ref: ArtifactRef
    uploaded: bool

    def to_dict(self) -> dict:
        return {**self.ref.to_dict(), "uploaded": self.uploaded}


def add_parser(commands) -> None:
    sub = commands.add_parser("models", help="Publish model folders in the artifact store (loops load them by URI).")
    actions = sub.add_subparsers(dest="action", required=True)
    push = actions.add_parser(
        "push",
        help="upload an HF model folder under models/<name>/<sha256>, verify it, print its URI",
        description="Upload an HF model folder (config.json, weights, tokenizer) to the artifact store under "
        "models/<name>/<sha256 of the folder>, verify the uploaded copy, and print its URI for the run config's "
        "models.student / models.teacher. Idempotent: the same folder gets the same URI and is uploaded once.",
    )
    push.add_argument("folder", help="the model folder (holds config.json)")
    push.add_argument(
        "--store",
        default=None,
        help="artifact store (path, file:// or s3://bucket; default MONTESSORI_ARTIFACTS_DIR); s3:// reads "
        "MINIO_ENDPOINT, MINIO_ACCESS_KEY, MINIO_SECRET_KEY, MINIO_SECURE",
    )
    push.add_argument("--name", default=None, help="the model's name in its key (default: the folder's name)")
    push.add_argument("--json", action="store_true", help="print one JSON object (uri, sha256, uploaded)")


def run(args: argparse.Namespace) -> int:
    from common.artifacts import open_store
    from common.envs import Env

    store = open_store(args.store or Env.read().artifacts_dir)
    result = push_model(store, Path(args.folder), name=args.name)
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True))
    else:
        print(result.ref.uri)
        print(f"sha256 {result.ref.sha256} ({'uploaded' if result.uploaded else 'already in the store'})")
    return 0


def push_model(store: ArtifactStore, folder: Path, *, name: str | None = None) -> PushResult:
    """Publish ``folder`` at ``models/<name>/<digest>`` (nothing uploaded when it is already there) and verify the
    store's copy. Errors name ``folder`` or ``--name``."""

    if not (folder / "config.json").is_file():
        raise NotFound(f"no model folder (config.json) at {folder}", field="folder")
    name = name if name is not None else folder.resolve().name
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"{name!r} is not a model name (1-100 letters, digits or ._=+-, not starting with '.')", field="--name"
        )
    files = _local_files(folder)
    digest = sha256_tree(folder)
    key = f"{MODELS_PREFIX}/{name}/{digest}"
    if store.exists(key) and store.recorded_digest(key) == digest:
        return PushResult(ArtifactRef(store.uri(key), digest), uploaded=False)
    store.put_dir(key, folder)
    try:
        verify_upload(store, key, files, digest)
    except FailedPrecondition:
        store.delete(key)  # a corrupted copy must not be what the next push (or a loop) finds
        raise
    return PushResult(ArtifactRef(store.uri(key), digest), uploaded=True)


def verify_upload(store: ArtifactStore, key: str, files: dict[str, str], digest: str) -> None:
    """The store's copy at ``key`` holds exactly ``files`` (relative path -> sha256) and hashes to ``digest``, or
    :class:`FailedPrecondition` naming ``folder``. On S3 every object is hashed as it streams back (a model is
    not written to this machine's disk a second time); elsewhere the store's own digest of its copy is used."""
    from common.s3_store import S3ArtifactStore

    if isinstance(store, S3ArtifactStore):
        stored = {name.removeprefix(f"{key}/"): store.object_sha256(name) for name in store.list(key)}
        actual = _tree_digest(stored)
        wrong = sorted(p for p in files.keys() | stored.keys() if files.get(p) != stored.get(p))
    else:
        actual = store.digest(key)
        wrong = []
    if wrong or actual != digest:
        raise FailedPrecondition(
            f"the uploaded copy at {store.uri(key)} does not match the folder (sha256 {actual[:12]}, expected "
            f"{digest[:12]}{'; differing: ' + ', '.join(wrong[:5]) if wrong else ''}); removed it, push again",
            field="folder",
        )


def _local_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _tree_digest(files: dict[str, str]) -> str:
    """:func:`common.artifacts.sha256_tree` of a folder given as relative path -> file digest (a test checks the
    two agree)."""
    tree = hashlib.sha256()
    for relative in sorted(files, key=Path):  # sha256_tree's order: by path parts, not by string
        tree.update(f"{relative}\0{files[relative]}\n".encode())
    return tree.hexdigest()
