"""An adapter chain collapsed into one adapter, or merged into a model folder, equals the chain merged in order
(tiny model)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from common.errors import FailedPrecondition, NotFound
from common.models import ModelRef, load_model
from services.teacher import adapters
from services.teacher.adapters import MERGE, chain_digest, chain_rank, collapse_chain, merge_chain, random_adapter


def _logits(ref: ModelRef) -> torch.Tensor:
    with torch.inference_mode():
        return load_model(ref, field="teacher")(input_ids=torch.arange(3, 40)[None]).logits


@pytest.fixture
def chain(tiny_teacher, tmp_path):
    # Different ranks, scales and module sets, as successive DPO rounds may use.
    return (
        random_adapter(tiny_teacher, tmp_path / "r1", seed=1, rank=8, alpha=16, scale=0.05),
        random_adapter(tiny_teacher, tmp_path / "r2", seed=2, rank=4, alpha=32, scale=0.05, use_rslora=True),
        random_adapter(
            tiny_teacher, tmp_path / "r3", seed=3, rank=8, alpha=8, scale=0.05, target_modules=["q_proj", "v_proj"]
        ),
    )


def test_collapsed_chain_equals_the_chain_merged_in_order(tiny_teacher, chain, tmp_path):
    collapsed = collapse_chain(chain, tmp_path / "one", max_rank=64)
    assert collapsed.exact and collapsed.rank == 20 and collapsed.truncation_error == 0.0
    config = json.loads((tmp_path / "one" / "adapter_config.json").read_text())
    assert config["r"] == 20 and config["lora_alpha"] == 20 and not config["use_rslora"]
    expected = _logits(ModelRef(str(tiny_teacher), chain))
    assert not torch.allclose(expected, _logits(ModelRef(str(tiny_teacher))), atol=1e-3)  # the chain matters
    collapsed_logits = _logits(ModelRef(str(tiny_teacher), (str(tmp_path / "one"),)))
    assert (collapsed_logits - expected).abs().max() < 1e-4, (collapsed_logits - expected).abs().max()


def test_a_chain_over_the_largest_rank_is_truncated_by_svd(tiny_teacher, chain, tmp_path):
    collapsed = collapse_chain(chain, tmp_path / "one", max_rank=8)
    assert not collapsed.exact and collapsed.rank == 8 and 0 < collapsed.truncation_error < 1
    full = collapse_chain(chain, tmp_path / "full", max_rank=64)
    truncated = _logits(ModelRef(str(tiny_teacher), (str(collapsed.path),)))
    exact = _logits(ModelRef(str(tiny_teacher), (str(full.path),)))
    base = _logits(ModelRef(str(tiny_teacher)))
    assert (truncated - exact).abs().max() < (base - exact).abs().max()  # closer to the chain than the base is


def test_digest_names_the_chain_and_bad_adapters_are_refused(tiny_teacher, chain, tmp_path):
    assert chain_digest(chain[:2]) != chain_digest(chain[1::-1]) and chain_digest(chain) == chain_digest(chain)
    with pytest.raises(NotFound, match="teacher.adapters"):
        chain_digest((str(tmp_path / "missing"),))
    with pytest.raises(FailedPrecondition, match="no adapter"):
        collapse_chain((), tmp_path / "x", max_rank=8)
    dora = random_adapter(tiny_teacher, tmp_path / "dora", seed=4, rank=4, alpha=8)
    config = json.loads((tmp_path / "dora" / "adapter_config.json").read_text())
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(FailedPrecondition, match="use_dora"):
        collapse_chain((dora,), tmp_path / "y", max_rank=8)
    assert not (tmp_path / "y").exists()


def test_a_merged_folder_equals_the_chain_merged_in_order_and_is_reused(tiny_teacher, chain, tmp_path, monkeypatch):
    ref = ModelRef(str(tiny_teacher), chain)
    target = tmp_path / "merged" / "one"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # a partial folder (no merge.json) is replaced, not served
    assert merge_chain(ref, target) == target
    assert json.loads((target / MERGE).read_text())["chain"] == list(chain)
    assert [p.name for p in target.parent.iterdir()] == ["one"]  # no staging folder left
    assert (_logits(ModelRef(str(target))) - _logits(ref)).abs().max() < 1e-5
    assert chain_rank(chain) == 20

    half = merge_chain(ref, tmp_path / "merged" / "bf16", dtype="bfloat16")
    assert json.loads((half / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(str(half / "model.safetensors")).values()} == {torch.bfloat16}

    monkeypatch.setattr(adapters, "load_model", lambda *a, **k: pytest.fail("a complete folder was merged again"))
    assert merge_chain(ref, target) == target
