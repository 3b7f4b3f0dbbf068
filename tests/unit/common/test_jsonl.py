"""JSONL reading errors name the file and line."""

from __future__ import annotations

import pytest

from common.errors import InvalidArgument, NotFound
from common.jsonl import read_instruction_rows


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"instruction": "a", "output": "b"}\n\n', r"x.jsonl:2: empty line"),
        ('{"instruction": "a", "output": "b"}\n{"instruction": \n', r"x.jsonl:2: malformed JSON"),
        ("[1, 2]\n", r"x.jsonl:1: expected a JSON object"),
        ('{"output": "b"}\n', r"x.jsonl:1: field 'instruction' missing"),
        ('{"instruction": "a", "output": "b", "input": 3}\n', r"x.jsonl:1: field 'input' must be a string"),
        ("", r"x.jsonl: no rows"),
    ],
)
def test_bad_rows(tmp_path, content, message):
    path = tmp_path / "x.jsonl"
    path.write_text(content)
    with pytest.raises(InvalidArgument, match=message):
        read_instruction_rows(path)


def test_missing_file(tmp_path):
    with pytest.raises(NotFound):
        read_instruction_rows(tmp_path / "none.jsonl")


def test_shipped_data_sets_are_valid_and_disjoint():
    from tests.conftest import DATA

    sets = {name: read_instruction_rows(DATA / f"{name}.jsonl") for name in ("seed", "reference", "eval")}
    assert len(sets["seed"]) >= 150 and len(sets["reference"]) >= 64 and len(sets["eval"]) >= 64
    texts = {name: {r["instruction"].strip().lower() for r in rows} for name, rows in sets.items()}
    assert (
        not texts["seed"] & texts["reference"]
        and not texts["seed"] & texts["eval"]
        and not texts["reference"] & texts["eval"]
    )
