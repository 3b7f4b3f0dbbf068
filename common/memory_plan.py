"""How much GPU memory each stage of a loop needs, from the models' ``config.json`` and the run's settings.

An estimate, written as a sum of named terms so that a refusal can say what is large: the weights, the gradients,
the AdamW moments, the influence scorer's snapshot (weights and optimizer state copied once and restored after each
candidate), the reference gradient of ``first_order``/``projected``, the activations of the configured batch at the
configured lengths (the logits over the vocabulary apart: for a small model with a large vocabulary they dominate),
and the teacher's KV cache. Lengths are the settings' upper bounds (``max_length``, ``max_new_tokens``), since the
batches are padded to their longest row; the coefficients were checked against the peaks that ``bench/gpu_check.py``
measured on one H200 (``tests/unit/test_memory_plan.py``: every estimate at or above the measured peak, and within
1.6x of it). No torch: the client runs ``montessori plan`` and the controller could run it before a loop.

Decoder-only transformers of the Llama family (Llama, Mistral, Qwen2, SmolLM2, Gemma 2/3) are read exactly: the
parameter count of the four models of the H200 check equals what torch counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.errors import FailedPrecondition, InvalidArgument

GIB = 1024**3
#: Bytes of one element in the dtypes a run config can name.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: Activation elements saved for the backward pass, per token and layer: a multiple of the hidden size (norms,
#: attention inputs and outputs, residuals; scaled-dot-product attention stores no T x T matrix) and of the MLP's
#: intermediate size (gate, up, their product).
ACTIVATION_PER_HIDDEN = 16
ACTIVATION_PER_INTERMEDIATE = 5
#: fp32 logit-sized tensors alive at once per token of a training step: the logits, their log-softmax and its
#: gradient (the loss upcasts to fp32).
LOGIT_COPIES_TRAINING = 3
#: ... and of a forward pass without gradients (the lm head's output, its fp32 upcast and its log-softmax).
LOGIT_COPIES_EVAL = 3
#: What the CUDA context and the caching allocator take beyond the tensors (per GPU): the capacity compared with
#: an estimate is the GPU's memory less this reserve, less FRAGMENTATION of it.
RUNTIME_RESERVE_GIB = 1.0
FRAGMENTATION = 0.05


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a decoder-only transformer depends on, read from its ``config.json``."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    family: str = "llama"
    attention_bias: bool = False

    @classmethod
    def from_config(cls, config: dict, *, source: str = "config.json") -> ModelShape:
        """A shape from a Hugging Face ``config.json`` (a multimodal one's ``text_config``); a missing key is an
        InvalidArgument naming it and the file."""
        config = config.get("text_config", config)
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            return cls(
                layers=int(config["num_hidden_layers"]),
                hidden=hidden,
                intermediate=int(config["intermediate_size"]),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                vocab=int(config["vocab_size"]),
                tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                family=str(config.get("model_type", "llama")),
                attention_bias=bool(config.get("attention_bias", False)) or config.get("model_type") == "qwen2",
            )
        except KeyError as err:
            raise InvalidArgument(f"{source} has no {err.args[0]!r}: not a decoder-only transformer config") from None

    @property
    def gemma(self) -> bool:
        return self.family.startswith("gemma")

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one decoder layer: q, k, v, o, gate, up, down."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def parameters(self) -> int:
        """Every parameter: embeddings (and an untied output layer), the linear layers, their biases, the norms."""
        per_layer = sum(a * b for a, b in self.linear_shapes())
        if self.attention_bias:
            per_layer += (self.heads + 2 * self.kv_heads) * self.head_dim
        per_layer += (4 if self.gemma else 2) * self.hidden  # RMSNorms (Gemma: around attention and MLP both)
        if self.family.startswith("gemma3"):
            per_layer += 2 * self.head_dim  # q_norm, k_norm
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embeddings + self.layers * per_layer + self.hidden

    def lora_parameters(self, rank: int) -> int:
        """A LoRA adapter of ``rank`` on every linear layer (the trainer's ``target_modules: all-linear``)."""
        return self.layers * sum(rank * (a + b) for a, b in self.linear_shapes())

    def activation_bytes(self, tokens: int, *, element_bytes: int, logit_copies: int, layers: bool = True) -> int:
        """Activations of ``tokens`` tokens: the layers' (``layers``: saved for a backward pass) and the logits."""
        per_token = logit_copies * self.vocab * 4
        if layers:
            per_layer = ACTIVATION_PER_HIDDEN * self.hidden + ACTIVATION_PER_INTERMEDIATE * self.intermediate
            per_token += self.layers * per_layer * element_bytes
        return tokens * per_token

    def kv_cache_bytes(self, tokens: int, *, element_bytes: int) -> int:
        """Keys and values of ``tokens`` tokens (all sequences together) in every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * element_bytes * tokens


@dataclass(frozen=True)
class Term:
    """One named part of a stage's memory, and the setting that sizes it (``""``: the model alone)."""

    name: str
    bytes: int
    field: str = ""


@dataclass(frozen=True)
class StageMemory:
    """A stage's memory on one of its GPUs, as a sum of terms."""

    stage: str
    model: str
    gpus: int
    terms: tuple[Term, ...] = field(default_factory=tuple)

    @property
    def bytes(self) -> int:
        return sum(term.bytes for term in self.terms)

    @property
    def gib(self) -> float:
        return self.bytes / GIB

    def largest(self) -> Term:
        return max(self.terms, key=lambda term: term.bytes)

    def to_dict(self) -> dict:
        return {
            "stage": self.stage,
            "model": self.model,
            "gpus": self.gpus,
            "gib": round(self.gib, 2),
            "terms": {term.name: round(term.bytes / GIB, 2) for term in self.terms},
        }


def training_memory(
    stage: str,
    shape: ModelShape,
    *,
    model: str,
    sequences: int,
    length: int,
    weight_bytes: int,
    lora_rank: int | None = None,
    reference_model: bool = False,
    gpus: int = 1,
    prefix: str,
) -> StageMemory:
    """A TRL training step (SFT, the warm-up, DPO) per GPU: weights, gradients and AdamW moments in the weights'
    dtype for a full fine-tune (sharded over ``gpus`` by FSDP), or frozen weights and an fp32 LoRA adapter; the
    bf16-autocast copy of the weights; activations of ``sequences`` x ``length`` tokens per GPU; for a full DPO,
    the frozen reference model."""
    p = shape.parameters
    terms = [Term("weights", p * weight_bytes // gpus)]
    if lora_rank:
        adapter = shape.lora_parameters(lora_rank)
        terms.append(Term("LoRA adapter, its gradients and AdamW moments", adapter * 16, f"{prefix}.lora_rank"))
    else:
        terms.append(Term("gradients", p * weight_bytes // gpus))
        terms.append(Term("AdamW moments", 2 * p * weight_bytes // gpus))
    if weight_bytes == 4:
        terms.append(Term("bf16 autocast copy of the weights", p * 2 // gpus))
    if reference_model:
        terms.append(Term("DPO reference model", p * weight_bytes // gpus, f"{prefix}.lora"))
    terms.append(
        Term(
            f"activations ({sequences} x {length} tokens)",
            shape.activation_bytes(sequences * length, element_bytes=2, logit_copies=LOGIT_COPIES_TRAINING),
            f"{prefix}.batch_size",
        )
    )
    return StageMemory(stage, model, gpus, tuple(terms))


def influence_memory(
    shape: ModelShape,
    *,
    model: str,
    mode: str,
    optimizer: str,
    candidate_batch: int,
    reference_batch: int,
    length: int,
) -> StageMemory:
    """The influence scorer on one GPU: fp32 weights and gradients, AdamW moments (``faithful``), the snapshot of
    both taken once and copied back after every candidate, the reference gradient (``first_order``/``projected``),
    the candidates' stepped weights (``candidate_batch_size`` > 1), and the activations of a candidate step (with
    gradients) and of a reference batch (with gradients for the reference gradient, else the logits only)."""
    p = shape.parameters
    moments = 8 * p if optimizer == "faithful" else 0
    terms = [Term("weights (fp32)", 4 * p), Term("gradients", 4 * p)]
    if moments:
        terms.append(Term("AdamW moments", moments, "influence.optimizer"))
    terms.append(Term("snapshot of the weights and optimizer state", 4 * p + moments, "influence.optimizer"))
    if mode in ("first_order", "projected"):
        terms.append(Term("reference gradient", 4 * p, "influence.mode"))
    if mode == "exact" and candidate_batch > 1:
        terms.append(
            Term("stepped weights of a candidate batch", candidate_batch * 4 * p, "influence.candidate_batch_size")
        )
    terms.append(
        Term(
            f"candidate step activations ({candidate_batch} x {length} tokens)",
            shape.activation_bytes(candidate_batch * length, element_bytes=4, logit_copies=LOGIT_COPIES_TRAINING),
            "influence.candidate_batch_size",
        )
    )
    with_gradients = mode in ("first_order", "projected")
    terms.append(
        Term(
            f"reference batch activations ({reference_batch} x {length} tokens)",
            shape.activation_bytes(
                reference_batch * length,
                element_bytes=4,
                logit_copies=LOGIT_COPIES_TRAINING if with_gradients else LOGIT_COPIES_EVAL,
                layers=with_gradients,
            ),
            "influence.reference_batch_size",
        )
    )
    return StageMemory("influence", model, 1, tuple(terms))


def generation_memory(
    shape: ModelShape, *, model: str, batch: int, length: int, weight_bytes: int, field: str
) -> StageMemory:
    """The teacher generating on one GPU (transformers): weights, the KV cache of ``batch`` sequences of ``length``
    tokens, the prefill's activations and the last position's logits."""
    tokens = batch * length
    terms = (
        Term("weights", shape.parameters * weight_bytes),
        Term(f"KV cache ({batch} x {length} tokens)", shape.kv_cache_bytes(tokens, element_bytes=weight_bytes), field),
        Term(
            "prefill activations",
            tokens * (4 * shape.hidden + 2 * shape.intermediate) * weight_bytes + batch * shape.vocab * 4 * 2,
            field,
        ),
    )
    return StageMemory("teacher", model, 1, terms)


def usable_bytes(gpu_memory_gib: float) -> int:
    """What the tensors of one GPU of ``gpu_memory_gib`` may take: less the runtime's reserve and fragmentation."""
    return int((gpu_memory_gib - RUNTIME_RESERVE_GIB) * (1 - FRAGMENTATION) * GIB)


def plan_stages(config, shapes: dict[str, ModelShape], *, gpus: int = 1) -> list[StageMemory]:
    """Every stage of a loop with the run config ``config`` (a resolved ``RunConfig``): the teacher's two kinds of
    generation, the warm-up and the student's SFT, influence scoring and held-out evaluation, and the teacher's DPO.
    ``gpus`` is the trainer's (FSDP shards a full fine-tune over them); the others use one GPU each."""
    teacher, student = shapes["teacher"], shapes["student"]
    dtype = DTYPE_BYTES[config.models.dtype]
    synthesis, influence, sft, warmup, dpo = config.synthesis, config.influence, config.sft, config.warmup, config.dpo
    stages = [
        # An instruction prompt (the in-context examples) is at most what DPO will train on: dpo.max_length.
        generation_memory(
            teacher,
            model="teacher",
            batch=synthesis.prompt_batch_size * synthesis.samples_per_prompt,
            length=dpo.max_length,
            weight_bytes=dtype,
            field="synthesis.prompt_batch_size",
        ),
        generation_memory(
            teacher,
            model="teacher",
            batch=synthesis.response_batch_size,
            length=synthesis.max_new_tokens + synthesis.response_max_new_tokens + 64,
            weight_bytes=dtype,
            field="synthesis.response_batch_size",
        ),
        influence_memory(
            student,
            model="student",
            mode=influence.mode,
            optimizer=influence.optimizer,
            candidate_batch=influence.candidate_batch_size,
            reference_batch=influence.reference_batch_size,
            length=influence.max_length,
        ),
    ]
    for name, settings in (("warmup", warmup), ("sft", sft)):
        stages.append(
            training_memory(
                name,
                student,
                model="student",
                sequences=settings.batch_size,
                length=settings.max_length,
                weight_bytes=dtype,
                gpus=gpus,
                prefix=name,
            )
        )
    stages.append(
        training_memory(
            "dpo",
            teacher,
            model="teacher",
            sequences=2 * dpo.batch_size,  # chosen and rejected
            length=dpo.max_length,
            weight_bytes=dtype,
            lora_rank=dpo.lora_rank if dpo.lora else None,
            reference_model=not dpo.lora,
            gpus=gpus,
            prefix="dpo",
        )
    )
    return stages


def check_fits(stages: list[StageMemory], gpu_memory_gib: float) -> None:
    """FailedPrecondition naming the first stage that does not fit one GPU of ``gpu_memory_gib``: its estimate,
    the usable memory, and its largest term with the setting that sizes it."""
    usable = usable_bytes(gpu_memory_gib)
    for stage in stages:
        if stage.bytes > usable:
            largest = stage.largest()
            setting = largest.field or f"models.{stage.model}"
            raise FailedPrecondition(
                f"stage {stage.stage} needs about {stage.gib:.1f} GiB per GPU ({stage.gpus} GPU(s)), more than the "
                f"{usable / GIB:.1f} GiB usable of a {gpu_memory_gib:g} GiB GPU; its largest part is {largest.name}, "
                f"{largest.bytes / GIB:.1f} GiB",
                field=setting,
            )
