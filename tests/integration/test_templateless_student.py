"""A base student whose tokenizer has no chat template runs the whole loop on the default template."""

from __future__ import annotations

import math

from transformers import AutoTokenizer

from cli.local import local_runner
from common.artifacts import LocalArtifactStore
from common.chat import DEFAULT_CHAT_TEMPLATE
from common.config import load_config
from services.controller.config import RunConfig
from tests.conftest import REPO
from tests.templateless import templateless_copy

TINY = REPO / "configs" / "tiny.yaml"


def test_a_templateless_student_trains_and_is_evaluated_on_the_default_template(tiny_student, tmp_path):
    student = templateless_copy(tiny_student, tmp_path / "base-student")
    root = tmp_path / "store"
    # One small round (the teacher's synthesis dominates its time); the student's stages are what is under test.
    config = load_config(
        RunConfig,
        TINY,
        [
            f"artifacts={root}",
            "loop_id=tl",
            "iterations=1",
            f"models.student={student}",
            "sizes.warmup_examples=4",
            "sizes.probe_prompts=4",
            "sizes.train_examples=4",
            "evaluation.baseline=false",
        ],
    )
    summary = local_runner(config).run()

    assert [row["iteration"] for row in summary["iterations"]] == [1] and not summary["stopped"]
    # Every probing candidate the teacher kept was scored on this student (how many it kept is the draw's business).
    probe = LocalArtifactStore(root).get_jsonl("loops/tl/iter-1/probe-data/candidates.jsonl")
    assert summary["iterations"][0]["candidates"] == len(probe)
    for key in ("base_student_eval_loss", "montessori_student_eval_loss"):
        assert math.isfinite(summary["evaluation"][key]), key
    store = LocalArtifactStore(root)
    # Every trained student (the warm-up that influence scores, the SFT'd one that is evaluated) carries the
    # template it was trained with, read straight from its folder; the base folder itself is left as it was.
    for stage in ("iter-1/warmup", "iter-1/student"):
        folder = store.local_path(f"loops/tl/{stage}/model")
        assert AutoTokenizer.from_pretrained(folder).chat_template == DEFAULT_CHAT_TEMPLATE, stage
    assert AutoTokenizer.from_pretrained(student).chat_template is None
