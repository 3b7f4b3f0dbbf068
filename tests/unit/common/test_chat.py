"""Examples become tokens with a response-only loss; over-long prompts are errors naming their source."""

from __future__ import annotations

import pytest

from common.chat import IGNORE_INDEX, chat_prompt, encode_example
from common.errors import InvalidArgument
from common.models import load_tokenizer


def test_labels_mask_exactly_the_prompt(tiny_student):
    tokenizer = load_tokenizer(tiny_student, field="student")
    encoded = encode_example(tokenizer, "Name a colour.", "Blue.", max_length=64, where="t")
    prompt_len = len(tokenizer(chat_prompt(tokenizer, "Name a colour."), add_special_tokens=False)["input_ids"])
    assert encoded.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert tokenizer.decode(encoded.labels[prompt_len:]) == "Blue.<|im_end|>\n"
    assert encoded.input_ids[prompt_len:] == encoded.labels[prompt_len:]


def test_prompt_longer_than_the_window_names_its_source(tiny_student):
    tokenizer = load_tokenizer(tiny_student, field="student")
    with pytest.raises(InvalidArgument, match=r"^data/x.jsonl:7: instruction is \d+ tokens"):
        encode_example(tokenizer, "word " * 400, "ok", max_length=64, where="data/x.jsonl:7")
