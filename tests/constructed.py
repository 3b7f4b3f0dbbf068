"""A stage outcome constructed for the tests of the loop's orchestration.

Whether a round of the tiny loop forms preference pairs depends on what a 0.14M-parameter model happens to
score, and that differs between machines (the tiny models are trained at set-up, and float reduction order and
BLAS kernels differ), so no test may wait for a draw that forms them. The tests of what the loop does *with*
pairs (DPO on them, the updated teacher writing the training set, lineage from the adapter) run the loop with
:class:`ConstructedScores`: every stage is the real one, and the influence scores are measured for real, then
re-published in their measured order as values centred within each prompt group, so that every group of two or
more candidates holds both a helpful and a harmful one, whatever the measured values were.
"""

from __future__ import annotations

import time
from collections import defaultdict

from cli.local import LocalExecutor
from common.manifests import StageResult, publish_manifest
from common.progress import Progress, no_progress
from montessori.v1 import influence_pb2
from services.influence.tasks import SCORES, score_metrics

#: Where the measured scores of a constructed stage are published, beside it.
MEASURED_SUFFIX = "-measured"


def centred_within_groups(rows: list[dict]) -> dict[str, float]:
    """Each candidate's constructed influence: ``(n - 1) / 2 - rank`` for the candidate of ``rank`` (0: the most
    helpful as measured, ties by id) in a group of ``n``: the top half positive, the bottom half negative, 0 for
    a singleton (which cannot be paired anyway)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["group_id"]].append(row)
    values = {}
    for members in groups.values():
        ordered = sorted(members, key=lambda r: (-r["influence"], r["id"]))
        for rank, row in enumerate(ordered):
            values[row["id"]] = (len(ordered) - 1) / 2 - rank
    return values


class ConstructedScores(LocalExecutor):
    """The in-process executor, with each Score stage's influences constructed as :func:`centred_within_groups`
    says (the measured ones kept in each row as ``influence_measured``, the manifest marked ``constructed``)."""

    def run(self, request, progress: Progress = no_progress) -> StageResult:
        if not isinstance(request, influence_pb2.ScoreRequest):
            return super().run(request, progress)
        started = time.time()
        measured_request = influence_pb2.ScoreRequest()
        measured_request.CopyFrom(request)
        measured_request.output_prefix = request.output_prefix + MEASURED_SUFFIX
        measured = super().run(measured_request, progress)
        manifest = self.store.get_json(self.store.key_of(measured.manifest.uri))
        rows = self.store.get_jsonl(self.store.key_of(measured.outputs["scores"].uri))
        values = centred_within_groups(rows)
        constructed = lambda row: dict.fromkeys(("influence", "influence_centred", "influence_raw"), values[row["id"]])  # noqa: E731
        rows = [{**row, "influence_measured": row["influence"], **constructed(row)} for row in rows]
        ref = self.store.put_jsonl(f"{request.output_prefix}/{SCORES}", rows)
        metrics = {
            **manifest["metrics"],
            **score_metrics(
                rows,
                reference_rows=int(manifest["metrics"]["reference_rows"]),
                reference_loss=manifest["metrics"]["reference_loss"],
                rate=manifest["metrics"]["candidates_per_second"],
            ),
            "constructed": 1,
        }
        return publish_manifest(
            self.store,
            request.output_prefix,
            stage="score",
            inputs=manifest["inputs"],
            config=manifest["config"],
            outputs={"scores": ref},
            metrics=metrics,
            started=started,
        )
