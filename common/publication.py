"""Write-once stage outputs: a prefix whose manifest is published belongs to the request that published it.

Before a stage runs, ``<output_prefix>/request.json`` records the digest of its request (its content: the
request id and ``validate_only`` left out). Once the stage's manifest is there:

* the same request again (a retry after a worker restart, a resumed loop) gets the published result back,
  nothing recomputed and nothing rewritten;
* any other request naming that prefix is ALREADY_EXISTS: a published artifact is never changed, so the
  digests a loop recorded stay true.

``request.json`` is created, never overwritten by another request (:meth:`ArtifactStore.create_json`: an
exclusive local create, a conditional S3 PUT): of two runs racing for one prefix exactly one writes it and runs;
the other is ALREADY_EXISTS before it does any work. A prefix whose ``request.json`` names this same request
but has no manifest (a stage that crashed, or is running) is taken over by the request (a re-send after a worker
restart: the outputs are deterministic, so a duplicate run writes the same bytes). A run that fails deletes the
record only while it names its own request, never another's.

A worker service also confines a job to its caller's loop: an output inside ``loops/<loop>/`` needs a request
id scoped to that loop (``<loop>:...``, which is how the controller names its jobs).
"""

from __future__ import annotations

from collections.abc import Callable

from common.artifacts import ArtifactRef, ArtifactStore
from common.errors import AlreadyExists, InvalidArgument, MontessoriError, NotFound
from common.manifests import MANIFEST, StageResult
from common.progress import Progress
from common.protoconv import content_fingerprint

#: The record of the request that writes (or wrote) a prefix.
REQUEST = "request.json"

Work = Callable[[Progress], StageResult]


def published(store: ArtifactStore, prefix: str, digest: str) -> StageResult | None:
    """The result published at ``prefix`` by the request with ``digest``; None when nothing is published there.
    ALREADY_EXISTS when another request published it."""
    parts = prefix.split("/")
    for depth in range(1, len(parts)):  # a stage folder is whole: nothing is added inside a published one
        outer = "/".join(parts[:depth])
        if store.exists(f"{outer}/{MANIFEST}"):
            raise AlreadyExists(
                f"{store.uri(prefix)} is inside {store.uri(outer)}, which is published; published artifacts are "
                "never changed (choose another output prefix)",
                field="output_prefix",
            )
    manifest_key = f"{prefix}/{MANIFEST}"
    if not store.exists(manifest_key):
        return None
    request_key = f"{prefix}/{REQUEST}"
    owner = store.get_json(request_key).get("request_sha256") if store.exists(request_key) else None
    if owner != digest:
        raise AlreadyExists(
            f"{store.uri(prefix)} is published by another request; published artifacts are never rewritten "
            "(choose another output prefix)",
            field="output_prefix",
        )
    manifest_ref = store.ref(manifest_key)
    manifest = store.get_json(manifest_key)
    outputs = {role: ArtifactRef(**ref) for role, ref in manifest.get("outputs", {}).items()}
    try:
        intact = all(store.digest(store.key_of(ref.uri)) == ref.sha256 for ref in outputs.values())
    except MontessoriError:  # an output is gone or does not verify
        intact = False
    if not intact:  # this request's own outputs, damaged: it publishes them again
        return None
    return StageResult(manifest.get("stage", ""), outputs, manifest.get("metrics", {}), manifest_ref)


def write_once(store: ArtifactStore, request, work: Work) -> Work:
    """``work`` publishing to ``request.output_prefix`` at most once (see the module doc). Checked now, so a
    conflicting submit fails at once, and again when the work starts, after any job that ran before it."""
    prefix = getattr(request, "output_prefix", "")
    if not prefix:  # a stage that publishes nothing (Evaluate of the mean only)
        return work
    digest = content_fingerprint(request)
    done = published(store, prefix, digest)
    if done is not None:
        return lambda progress: done

    def run(progress: Progress) -> StageResult:
        earlier = published(store, prefix, digest)
        if earlier is not None:
            return earlier
        record = f"{prefix}/{REQUEST}"
        # Deterministic content (no writer id): a loop's folders are compared byte for byte.
        claim = {"request_sha256": digest, "type": request.DESCRIPTOR.full_name}
        if not store.create_json(record, claim) and _record(store, record).get("request_sha256") != digest:
            raise AlreadyExists(
                f"{store.uri(prefix)} is being written by another request (its {REQUEST} names it); a prefix "
                "belongs to the first request that claims it (choose another output prefix)",
                field="output_prefix",
            )
        # Created now, or the same request's own unpublished record (a re-send): this request holds the prefix.
        try:
            return work(progress)
        except BaseException:  # failed or cancelled: the prefix is left as the work left it (nothing published)
            if not store.exists(f"{prefix}/{MANIFEST}") and _record(store, record).get("request_sha256") == digest:
                store.delete(record)  # its own record only: a failure never frees another request's prefix
            raise

    return run


def _record(store: ArtifactStore, key: str) -> dict:
    """The request record at ``key`` ({} when it is gone)."""
    try:
        return store.get_json(key)
    except NotFound:
        return {}


def confine_to_loop(request) -> None:
    """A job writing inside ``loops/<loop>/`` must be that loop's (request id ``<loop>:...``): no other caller
    can add to, or replace, a loop's artifacts."""
    prefix = getattr(request, "output_prefix", "")
    parts = prefix.split("/")
    if len(parts) > 1 and parts[0] == "loops" and not request.request_id.startswith(f"{parts[1]}:"):
        raise InvalidArgument(
            f"an output inside loops/{parts[1]}/ belongs to that loop: its request_id must start with '{parts[1]}:'",
            field="output_prefix",
        )
