"""The one way to load a causal LM and its tokenizer (any ``AutoModelForCausalLM`` folder).

Teachers are versioned as a base folder plus a chain of LoRA adapters (one per DPO
round, each trained on top of the previous version merged into the weights). A model
version may also name the chat template its examples are formatted with (the student's
``models.student_chat_template``); :func:`load_tokenizer` is where that choice is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.device import resolve_device
from common.errors import FailedPrecondition, InvalidArgument, NotFound

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelRef:
    """A model version: a base HF folder plus LoRA adapter folders applied (and merged) in order,
    and the chat template its tokenizer uses (``None``: the folder's own, else the built-in default)."""

    path: str
    adapters: tuple[str, ...] = field(default=())
    chat_template: str | None = None

    def with_adapter(self, adapter_dir: str) -> ModelRef:
        return ModelRef(self.path, self.adapters + (adapter_dir,), self.chat_template)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "adapters": list(self.adapters)}
        if self.chat_template is not None:  # only the student's may be set; teacher listings stay as they were
            out["chat_template"] = self.chat_template
        return out


def model_dir(path: str | Path, *, field: str) -> Path:
    """``path`` as a folder holding an HF model, or :class:`NotFound` naming ``field`` (:class:`InvalidArgument`
    for an artifact-store URI: a loop resolves those to a local copy before loading; a single stage loads
    folders only)."""
    if "://" in str(path):
        raise InvalidArgument(
            f"{path} is an artifact-store URI; here a model folder is needed (a loop's run config, started with "
            "`montessori run` or `montessori loop start`, loads models from the store)",
            field=field,
        )
    folder = Path(path)
    if not (folder / "config.json").is_file():
        hint = (
            " (run `make setup` to build the offline models)"
            if "models/" in str(path) or str(path).startswith("models")
            else ""
        )
        raise NotFound(f"no model folder (config.json) at {folder}{hint}", field=field)
    return folder


def load_tokenizer(
    model: ModelRef | str | Path,
    *,
    field: str,
    padding_side: str = "right",
    chat_template: str | None = None,
    template_field: str | None = None,
):
    """The tokenizer of ``model`` (a ModelRef or a folder), with a pad token, the given padding side and a
    chat template: ``chat_template`` if given, else the ModelRef's, else the folder's own, else
    :func:`common.chat.default_chat_template` (a base model's tokenizer has none). An explicit template
    that does not render a prompt extended by the response is :class:`InvalidArgument` naming
    ``template_field`` (default: ``<field without .path>.chat_template``); a folder's own template is
    the model's (a teacher's is only used to generate) and is left as it is."""
    from transformers import AutoTokenizer

    from common.chat import check_chat_template, default_chat_template

    path = model.path if isinstance(model, ModelRef) else model
    if chat_template is None and isinstance(model, ModelRef):
        chat_template = model.chat_template
    template_field = template_field or f"{field.removesuffix('.path')}.chat_template"
    folder = model_dir(path, field=field)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # transformers raises many types; the user needs one line
        raise FailedPrecondition(f"cannot load tokenizer from {folder}: {_first_line(err)}", field=field) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    if chat_template is not None:
        tokenizer.chat_template = chat_template
        check_chat_template(tokenizer, field=template_field)
    elif tokenizer.chat_template is None:  # a base model's tokenizer
        tokenizer.chat_template = default_chat_template(tokenizer)
    return tokenizer


def load_model(
    ref: ModelRef | str | Path,
    *,
    field: str,
    dtype: str = "float32",
    trainable: bool = False,
    device: str | torch.device | None = None,
):
    """Load a causal LM (base + merged adapters), in eval mode unless ``trainable``: on the CPU, or on ``device``
    (a torch device, or a device setting resolved by :func:`common.device.resolve_device` naming ``field``)."""
    from transformers import AutoModelForCausalLM

    ref = ref if isinstance(ref, ModelRef) else ModelRef(str(ref))
    folder = model_dir(ref.path, field=field)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype])
    except Exception as err:
        raise FailedPrecondition(f"cannot load model from {folder}: {_first_line(err)}", field=field) from None
    for adapter in ref.adapters:
        model = merge_adapter(model, adapter, field=field)
    model.train(trainable)
    model.requires_grad_(trainable)
    if device is not None:
        model.to(device if isinstance(device, torch.device) else resolve_device(device, field=field))
    return model


def merge_adapter(model, adapter_dir: str | Path, *, field: str):
    """Apply the LoRA adapter in ``adapter_dir`` to ``model`` and merge it into the weights."""
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise NotFound(f"no LoRA adapter (adapter_config.json) at {adapter_dir}", field=field)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def context_length(model) -> int:
    """Longest sequence the model accepts."""
    return int(getattr(model.config, "max_position_embeddings", 2048))


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
