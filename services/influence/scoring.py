"""Local data influence (METHOD.md stage 4), exactly as defined, with in-memory restore.

    L0           = mean loss of the student on the reference set (once per student version)
    S'           = student after ONE optimizer step on candidate z alone
    influence(z) = L0 - L(S' on the reference set)        (> 0: z helps)

The student's weights and the optimizer state are snapshotted once and copied back
in place before every candidate: no reload from disk, no per-candidate deep copy.
Weights stay fp32 (master weights) for exactness. The reference set is tokenised
once and evaluated in length-sorted batches padded to the longest row; its mean is
the mean of per-batch mean losses, as in the official code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.chat import IGNORE_INDEX, EncodedExample, encode_example, instruction_text
from common.progress import Progress, Stopwatch, no_progress
from services.influence.config import InfluenceConfig


@dataclass(frozen=True)
class Example:
    """An (instruction, response) pair to score or to use as a reference row."""

    id: str
    user_text: str
    response: str
    source: str = ""  # "file:line" for error messages

    @property
    def where(self) -> str:
        return self.source or f"example {self.id}"


def examples_from_rows(rows: list[dict], *, prefix: str, source: str = "") -> list[Example]:
    """Alpaca rows (instruction/input/output) as examples; ``source`` names their file in errors."""
    return [Example(f"{prefix}-{i}", instruction_text(r["instruction"], r.get("input", "")), r["output"],
                    f"{source}:{i + 1}" if source else "") for i, r in enumerate(rows)]


def collate(encoded: list[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch to the longest row, labels ``-100`` on padding."""
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class ReferenceLoss:
    """The mean response-only loss on a fixed reference set, batched once and reused."""

    def __init__(self, tokenizer, rows: list[Example], *, batch_size: int, max_length: int):
        encoded = [encode_example(tokenizer, r.user_text, r.response, max_length=max_length, where=r.where) for r in rows]
        encoded.sort(key=lambda e: len(e.input_ids))
        self.batches = [collate(encoded[i:i + batch_size], tokenizer.pad_token_id) for i in range(0, len(encoded), batch_size)]
        self.rows = len(encoded)

    @torch.no_grad()
    def __call__(self, model) -> float:
        losses = [model(**batch).loss for batch in self.batches]
        return float(torch.stack(losses).mean())


class InfluenceScorer:
    """Scores candidates against one student state (weights + optimizer), restoring it exactly each time."""

    def __init__(self, model, tokenizer, reference: list[Example], config: InfluenceConfig,
                 optimizer: torch.optim.Optimizer | None = None):
        if config.optimizer == "faithful" and optimizer is None:
            raise ValueError("faithful mode needs the warm-up optimizer state")
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.max_length = min(config.max_length, int(getattr(model.config, "max_position_embeddings", config.max_length)))
        model.train(False)  # no dropout: the step must be deterministic
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("student has no trainable parameters")
        if optimizer is None:
            optimizer = torch.optim.SGD(self.params, lr=config.sgd_learning_rate, momentum=0.0, foreach=False)
        self.optimizer = optimizer
        self.reference_loss = ReferenceLoss(tokenizer, reference, batch_size=config.reference_batch_size, max_length=self.max_length)
        # One snapshot of everything a step mutates, taken once and copied back in place.
        self._weights = [p.detach().clone() for p in self.params]
        self._optimizer_state = {id(p): {k: v.clone() for k, v in optimizer.state[p].items()} for p in self.params if p in optimizer.state}
        self._group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        self._reference_gradient: list[torch.Tensor] | None = None
        self.base_loss = self.reference_loss(model)

    def restore(self) -> None:
        """Put weights and optimizer state back to the snapshot, bit for bit."""
        with torch.no_grad():
            for param, saved in zip(self.params, self._weights):
                param.copy_(saved)
                param.grad = None
        for param in self.params:
            saved = self._optimizer_state.get(id(param))
            if saved is None:
                self.optimizer.state.pop(param, None)
                continue
            state = self.optimizer.state[param]
            for key, value in saved.items():
                if key in state and state[key].shape == value.shape:
                    state[key].copy_(value)
                else:
                    state[key] = value.clone()

    def encode(self, example: Example) -> EncodedExample:
        return encode_example(self.tokenizer, example.user_text, example.response, max_length=self.max_length, where=example.where)

    def score_one(self, example: Example | EncodedExample) -> tuple[float, float]:
        """(influence, reference loss after the step) of one candidate; the state is restored afterwards."""
        encoded = self.encode(example) if isinstance(example, Example) else example
        batch = collate([encoded], self.tokenizer.pad_token_id)
        try:
            loss = self.model(**batch).loss
            if torch.isfinite(loss) and loss.requires_grad:
                loss.backward()
                self.optimizer.step()
            after = self.reference_loss(self.model)
        finally:
            self.restore()
        return self.base_loss - after, after

    def score(self, examples: list[Example], *, progress: Progress = no_progress, stage: str = "influence",
              mode: str | None = None) -> list[dict]:
        """Rows ``{id, influence, reference_loss_after}`` in input order, with throughput in ``self.last_rate``."""
        mode = mode or self.config.mode
        encoded = [self.encode(example) for example in examples]  # every input is checked before any work
        watch = Stopwatch()
        rows = []
        for done, (example, tokens) in enumerate(zip(examples, encoded), start=1):
            if mode == "first_order":
                influence, after = self.first_order_one(tokens), None
            else:
                influence, after = self.score_one(tokens)
            rows.append({"id": example.id, "influence": influence, "reference_loss_after": after})
            progress(stage, done, len(examples), {"cand/s": done / max(watch.elapsed, 1e-9)})
        self.last_rate = len(examples) / max(watch.elapsed, 1e-9)
        return rows

    # -- first-order estimate ----------------------------------------------------------------

    def reference_gradient(self) -> list[torch.Tensor]:
        """Gradient of the reference loss (mean of per-batch means) at the snapshot, computed once."""
        if self._reference_gradient is None:
            for param in self.params:
                param.grad = None
            for batch in self.reference_loss.batches:
                (self.model(**batch).loss / len(self.reference_loss.batches)).backward()
            self._reference_gradient = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params]
            for param in self.params:
                param.grad = None
        return self._reference_gradient

    @torch.no_grad()
    def _update_direction(self, param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """-(the step the optimizer would take) / lr for ``param`` given ``grad``, from the snapshot state."""
        if isinstance(self.optimizer, torch.optim.SGD):
            return grad
        group = self._group_of[id(param)]
        beta1, beta2 = group["betas"]
        state = self._optimizer_state.get(id(param), {})
        step = float(state["step"]) + 1 if "step" in state else 1.0
        exp_avg = state["exp_avg"] * beta1 + grad * (1 - beta1) if "exp_avg" in state else grad * (1 - beta1)
        exp_avg_sq = state["exp_avg_sq"] * beta2 + grad * grad * (1 - beta2) if "exp_avg_sq" in state else grad * grad * (1 - beta2)
        denom = (exp_avg_sq / (1 - beta2 ** step)).sqrt() + group["eps"]
        return exp_avg / (1 - beta1 ** step) / denom + group["weight_decay"] * param

    def first_order_one(self, encoded: EncodedExample) -> float:
        """lr * <grad L_ref, update direction of the candidate>: the first-order Taylor estimate of L0 - L_after."""
        reference = self.reference_gradient()
        batch = collate([encoded], self.tokenizer.pad_token_id)
        for param in self.params:
            param.grad = None
        self.model(**batch).loss.backward()
        total = 0.0
        for param, g_ref in zip(self.params, reference):
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            lr = self._group_of[id(param)]["lr"]
            total += lr * float(torch.dot(g_ref.flatten(), self._update_direction(param, grad).flatten()))
            param.grad = None
        return total


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    if len(a) < 2:
        return 1.0
    ra, rb = torch.tensor(ranks(a)), torch.tensor(ranks(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator else 1.0


def pair_agreement(groups: list[str], exact: list[float], estimate: list[float]) -> float:
    """Share of preference pairs (the method's rule) that both scorings produce: |E & F| / |E | F|."""
    def pairs(values):
        out = set()
        for i, gi in enumerate(groups):
            for j, gj in enumerate(groups):
                if gi == gj and values[i] > 0 > values[j]:
                    out.add((i, j))
        return out

    e, f = pairs(exact), pairs(estimate)
    return len(e & f) / len(e | f) if e | f else 1.0
