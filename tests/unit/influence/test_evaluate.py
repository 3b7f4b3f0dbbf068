"""Held-out evaluation per row: the artifact students are compared with, row by row."""

from __future__ import annotations

import json

import pytest

from common.artifacts import LocalArtifactStore
from common.errors import InvalidArgument
from common.models import ModelRef, load_model, load_tokenizer
from services.influence import tasks
from services.influence.scoring import ReferenceLoss, examples_from_rows
from tests.conftest import DATA


def test_per_row_losses_keep_row_order_and_category_and_average_to_the_reference_loss(tiny_student, tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    result = tasks.evaluate(
        store, "eval/base", model=ModelRef(str(tiny_student)), rows_path=DATA / "eval.jsonl", batch_size=4, limit=12
    )
    rows = store.get_jsonl("eval/base/losses.jsonl")
    source = [json.loads(line) for line in (DATA / "eval.jsonl").read_text().splitlines()[:12]]
    assert [r["row"] for r in rows] == list(range(12))
    assert [r["category"] for r in rows] == [s["category"] for s in source]
    assert all(r["loss"] > 0 for r in rows)
    # The mean is the row-mean reference loss, whatever the batch composition.
    tokenizer, model = (
        load_tokenizer(ModelRef(str(tiny_student)), field="s"),
        load_model(ModelRef(str(tiny_student)), field="s"),
    )
    reference = ReferenceLoss(
        tokenizer,
        examples_from_rows(source, prefix="eval", source="eval"),
        batch_size=5,
        max_length=512,
        averaging="row_mean",
    )
    expected = reference(model)
    assert result.metrics["loss"] == pytest.approx(expected, rel=1e-4)
    assert tasks.evaluation_loss(
        ModelRef(str(tiny_student)), DATA / "eval.jsonl", batch_size=3, limit=12
    ) == pytest.approx(expected, rel=1e-4)
    manifest = store.get_json("eval/base/manifest.json")
    assert (
        manifest["stage"] == "evaluate"
        and manifest["outputs"]["losses"]["sha256"] == store.ref("eval/base/losses.jsonl").sha256
    )


def test_an_over_long_row_is_an_error_naming_it(tiny_student, tmp_path):
    rows = [
        {"instruction": "Say hi.", "input": "", "output": "Hi."},
        {"instruction": "word " * 600, "input": "", "output": "Hi."},
    ]
    student = ModelRef(str(tiny_student))
    tokenizer, model = load_tokenizer(student, field="student"), load_model(student, field="student")
    with pytest.raises(InvalidArgument, match="rows.jsonl:2"):
        tasks.row_losses(
            model, tokenizer, examples_from_rows(rows, prefix="r", source="rows.jsonl"), batch_size=2, max_length=64
        )
