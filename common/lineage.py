"""Lineage and retention over stage manifests: which artifact came from which, and what is garbage.

Every stage publishes ``<stage-prefix>/manifest.json`` last, pinning its inputs and outputs
by URI and SHA-256, so the manifests alone describe the whole provenance graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.artifacts import ArtifactStore
from common.errors import NotFound
from common.manifests import MANIFEST

LOOP_FILES = ("config.json", "state.json", "summary.json", "rounds.jsonl")
#: Experiments (``montessori experiment``) are results, never garbage; their loops are kept like any loop.
EXPERIMENTS = "experiments/"


def loop_ids(store: ArtifactStore) -> list[str]:
    return sorted({key.split("/")[1] for key in store.list("loops") if key.count("/") >= 2})


def manifests(store: ArtifactStore, prefix: str) -> dict[str, dict]:
    """Stage prefix -> manifest, for every completed stage under ``prefix``."""
    return {
        key.removesuffix(f"/{MANIFEST}"): store.get_json(key)
        for key in store.list(prefix)
        if key.endswith(f"/{MANIFEST}")
    }


def _refs(node) -> list[dict]:
    """Every ``{"uri", "sha256"}`` inside a manifest's (nested) inputs."""
    if isinstance(node, dict):
        if "uri" in node and "sha256" in node:
            return [node]
        return [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


@dataclass
class LineageNode:
    """An artifact, the stage that produced it (if any), and that stage's inputs."""

    uri: str
    sha256: str
    stage: str = ""
    manifest: str = ""
    inputs: list[LineageNode] = field(default_factory=list)

    def render(self, indent: int = 0) -> list[str]:
        made_by = f"  <- {self.stage} ({self.manifest})" if self.stage else "  (input)"
        lines = [f"{'  ' * indent}{self.uri} sha256={self.sha256[:12]}{made_by}"]
        for child in self.inputs:
            lines += child.render(indent + 1)
        return lines


def lineage(store: ArtifactStore, uri: str) -> LineageNode:
    """The provenance tree of ``uri`` (an adapter, pairs, scores, candidates, a model...)."""
    key = store.key_of(uri)
    parts = key.split("/")
    scope = "/".join(parts[:2]) if parts[0] == "loops" and len(parts) > 2 else ""
    by_output = {}
    for prefix, manifest in manifests(store, scope).items():
        for ref in manifest.get("outputs", {}).values():
            by_output[ref["uri"]] = (prefix, manifest)
    if uri not in by_output and not store.exists(key):
        raise NotFound(f"no artifact at {uri}", field="uri")

    def node(ref_uri: str, sha: str, seen: frozenset) -> LineageNode:
        if ref_uri not in by_output or ref_uri in seen:
            return LineageNode(ref_uri, sha)
        prefix, manifest = by_output[ref_uri]
        children = [node(r["uri"], r["sha256"], seen | {ref_uri}) for r in _refs(manifest.get("inputs", {}))]
        return LineageNode(ref_uri, sha, manifest["stage"], store.uri(f"{prefix}/{MANIFEST}"), children)

    sha = by_output[uri][1]["outputs"] if uri in by_output else {}
    digest = next((r["sha256"] for r in sha.values() if r["uri"] == uri), "") if sha else store.digest(key)
    return node(uri, digest, frozenset())


#: A loop whose ``state.json`` says one of these has ended: no stage of it runs or resumes.
TERMINAL_STATUSES = ("succeeded", "failed", "stopped")


def loop_active(store: ArtifactStore, loop_id: str) -> bool:
    """Whether a loop may still be running or resumed: its state says ``running``, or it has no (readable) state
    yet (a loop being started)."""
    try:
        return store.get_json(f"loops/{loop_id}/state.json").get("status") not in TERMINAL_STATUSES
    except Exception:  # noqa: BLE001 - no state yet, or one a crash left unreadable: not known to have ended
        return True


def garbage(store: ArtifactStore, keep: list[str] | None = None) -> list[str]:
    """Keys no kept loop references: ended loops not in ``keep`` (when given), stage folders without a
    manifest (a crashed stage) of ended loops, and anything outside ``loops/``, ``experiments/`` and the user inputs
    ``models/`` and ``data/``.

    A kept loop that has not ended (:func:`loop_active`) is kept whole: a running stage's folder has no manifest
    yet, and its ``request.json`` and ``-checkpoint`` folder are what its re-sent request resumes from (without
    ``request.json``, the stage's own re-send would be ALREADY_EXISTS once it published)."""
    every_loop = loop_ids(store)
    active = {loop_id for loop_id in every_loop if loop_active(store, loop_id)}
    kept_loops = (set(every_loop) if keep is None else set(keep)) | active  # a running loop is never collected
    # Inputs users put in the store (``montessori models push``, data uploaded by ``loop start``) are theirs to
    # delete: a loop that will name them may not exist yet.
    referenced_prefixes = [EXPERIMENTS, "models/", "data/"]
    for loop_id in kept_loops:
        base = f"loops/{loop_id}"
        if loop_id in active:
            referenced_prefixes.append(f"{base}/")
            continue
        referenced_prefixes += [f"{base}/{name}" for name in LOOP_FILES] + [f"{base}/inputs/"]
        for prefix, manifest in manifests(store, base).items():
            referenced_prefixes.append(f"{prefix}/")
            for ref in _refs(manifest.get("inputs", {})):  # e.g. evaluation samples a stage read
                try:
                    referenced_prefixes.append(store.key_of(ref["uri"]))
                except Exception:  # noqa: BLE001 - inputs outside the store (base models, data files) are not ours
                    continue
    out = []
    for key in store.list():
        if not any(key == p or key.startswith(p) for p in referenced_prefixes):
            out.append(key)
    return out
