"""The teacher prefills each prompt once for its n samples: the cache it copies to the n rows is the one a
full forward pass of each row builds (left padding and positions included)."""

from __future__ import annotations

import torch

from common.models import ModelRef
from services.teacher.backend import SamplingParams, TransformersBackend

PROMPTS = ["<instruction>Name a colour.</instruction>\n<instruction>", "A longer prompt, padded less:\n<instruction>"]


def test_the_shared_prefill_continues_exactly_as_a_full_forward_pass(tiny_teacher):
    backend = TransformersBackend(ModelRef(str(tiny_teacher)))
    batch = backend.tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    assert batch["attention_mask"][0].sum() != batch["attention_mask"][1].sum()  # left padding is exercised
    n = 3
    with torch.inference_mode():
        rows, cache = backend._shared_prefill(batch, n)
        ids, mask = rows["input_ids"], rows["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        continued = backend.model(
            input_ids=ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:], past_key_values=cache
        ).logits[:, -1]
        full = backend.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    assert ids.shape[0] == n * len(PROMPTS) and torch.equal(ids[:n], batch["input_ids"][:1].expand(n, -1))
    # fp32 sums in another order: a few ulps of the logits' size, never a different next token distribution
    scale = float(full.abs().max())
    assert torch.allclose(continued, full, rtol=0, atol=64 * torch.finfo(torch.float32).eps * scale)


def test_n_samples_per_prompt_come_back_grouped_by_prompt(tiny_teacher):
    backend = TransformersBackend(ModelRef(str(tiny_teacher)))
    out = backend.generate(PROMPTS, SamplingParams(n=3, temperature=0.0, max_new_tokens=6))
    assert [len(samples) for samples in out] == [3, 3]
    assert all(len(set(samples)) == 1 for samples in out)  # greedy: a prompt's n rows are the same row
