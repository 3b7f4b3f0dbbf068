"""Local data influence (METHOD.md stage 4), exactly as defined, with in-memory restore.

    L0            = mean loss of the student on the reference set (once per student version)
    S'            = student after ONE optimizer step on candidate z alone
    raw(z)        = L0 - L(S' on the reference set)                      (the official score; > 0: z helps)
    centred(z)    = L(S + step(0)) - L(S' on the reference set)          (the default, ``centring: shared_step``)

``step(0)`` is the restored optimizer's step with a zero gradient: with the warm-up's AdamW state it is the
warm-up momentum (and weight decay) that every candidate's step shares. The probe step's first moment is
c * (sum_k beta1^(T+1-k) g_k + g_z), mostly the warm-up's, so raw(z) ~ lr c [A + b_z] with a shared A about as
large as the spread of b_z: the raw sign mostly reports A. ``centred = raw - raw(shared step)`` removes A and
keeps the paper's optimizer, state and learning rate (with plain SGD the two are equal).

The student's weights and the optimizer state are snapshotted once and copied back
in place before every candidate: no reload from disk, no per-candidate deep copy.
Weights stay fp32 (master weights) for exactness. The reference set is tokenised
once and evaluated in length-sorted batches padded to the longest row; its mean is
the mean of per-row means (``reference_averaging: row_mean``, every row weighs the same)
or the official mean of per-batch token-pooled means (``batch_mean``).

Two estimates skip the per-candidate reference pass (METHOD.md: "fast approximations ...
whose agreement with the exact score is measured and reported"):

    first_order: centred(z) ~ lr * <g_ref, u_z - u_0>          (first-order Taylor expansion)
    projected:   centred(z) ~ lr * <P g_ref, P (u_z - u_0)>    (P: a fixed random count sketch, E[P^T P] = I)

and raw(z) ~ centred(z) + lr * <g_ref, u_0>, where g_ref is the gradient of the reference loss at the snapshot
(computed once per student version), u_z the candidate's update direction (its gradient for SGD, Adam's
preconditioned direction from the warm-up moments in faithful mode) and u_0 the direction at a zero gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch.func import functional_call, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from common.chat import IGNORE_INDEX, EncodedExample, encode_example, instruction_text
from common.device import resolve_device
from common.progress import Progress, Stopwatch, no_progress
from services.influence.config import InfluenceConfig
from services.influence.sketch import CountSketch


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
    return [
        Example(
            f"{prefix}-{i}",
            instruction_text(r["instruction"], r.get("input", "")),
            r["output"],
            f"{source}:{i + 1}" if source else "",
        )
        for i, r in enumerate(rows)
    ]


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


def per_example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's own mean response-only token loss (shape ``(batch,)``), computed in fp32 like the
    model's own loss; padding and the other rows do not enter a row's mean. A row without response
    tokens gets 0 (and no gradient), as the exact step skips it."""
    targets = labels[:, 1:]
    counted = targets != IGNORE_INDEX
    token_losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets.clamp(min=0), reduction="none"
    )
    return (token_losses * counted).sum(dim=1) / counted.sum(dim=1).clamp(min=1)


class ReferenceLoss:
    """The mean response-only loss on a fixed reference set, batched once and reused.

    ``averaging``: 'row_mean' (mean of per-row means: a row weighs the same whatever shares its batch) or
    'batch_mean' (the official code's mean of per-batch token-pooled means). ``term`` is one batch's
    differentiable share of the mean, so that gradients and vmapped evaluations use the same definition."""

    def __init__(
        self,
        tokenizer,
        rows: list[Example],
        *,
        batch_size: int,
        max_length: int,
        averaging: str = "row_mean",
        device: torch.device | str = "cpu",
    ):
        if averaging not in ("row_mean", "batch_mean"):
            raise ValueError(f"unknown reference averaging {averaging!r}")
        encoded = [
            encode_example(tokenizer, r.user_text, r.response, max_length=max_length, where=r.where) for r in rows
        ]
        encoded.sort(key=lambda e: len(e.input_ids))
        # Moved to the model's device once: the reference set is evaluated for every candidate.
        self.batches = [
            {
                key: value.to(device)
                for key, value in collate(encoded[i : i + batch_size], tokenizer.pad_token_id).items()
            }
            for i in range(0, len(encoded), batch_size)
        ]
        self.rows = len(encoded)
        self.averaging = averaging
        # Rows whose response was cut away entirely have no loss; they do not count in the mean.
        self._counted_rows = max(1, sum(any(label != IGNORE_INDEX for label in e.labels[1:]) for e in encoded))

    def term(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """This batch's share of the mean (with a graph when the model has one); ``model`` may be a
        ``functional_call`` wrapper."""
        if self.averaging == "batch_mean":
            return model(**batch).loss / len(self.batches)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return per_example_losses(logits, batch["labels"]).sum() / self._counted_rows

    @torch.no_grad()
    def __call__(self, model) -> float:
        return float(torch.stack([self.term(model, batch) for batch in self.batches]).sum())


def move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move ``optimizer``'s per-parameter tensors (the moments) to ``device`` in place. Scalar tensors (AdamW's
    ``step``) stay where they are: the non-capturable, non-fused AdamW reads its step count on the host."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.device != device:
                state[key] = value.to(device)


class InfluenceScorer:
    """Scores candidates against one student state (weights + optimizer), restoring it exactly each time."""

    def __init__(
        self,
        model,
        tokenizer,
        reference: list[Example],
        config: InfluenceConfig,
        optimizer: torch.optim.Optimizer | None = None,
    ):
        if config.optimizer == "faithful" and optimizer is None:
            raise ValueError("faithful mode needs the warm-up optimizer state")
        # The student, its optimizer state and the reference set live on config.device; the weights keep their
        # dtype (fp32 master weights). Module.to() moves parameters in place (same Parameter objects), so an
        # optimizer built over them, as tasks.py loads it on the CPU, still holds this model's parameters.
        self.device = resolve_device(config.device)
        model.to(self.device)
        if optimizer is not None:
            move_optimizer_state(optimizer, self.device)
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.max_length = min(
            config.max_length, int(getattr(model.config, "max_position_embeddings", config.max_length))
        )
        model.train(False)  # no dropout: the step must be deterministic
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in trainable]
        self.params = [p for _, p in trainable]
        if not self.params:
            raise ValueError("student has no trainable parameters")
        if optimizer is None:
            optimizer = torch.optim.SGD(self.params, lr=config.sgd_learning_rate, momentum=0.0, foreach=False)
        self.optimizer = optimizer
        self.reference_loss = ReferenceLoss(
            tokenizer,
            reference,
            batch_size=config.reference_batch_size,
            max_length=self.max_length,
            averaging=config.reference_averaging,
            device=self.device,
        )
        # One snapshot of everything a step mutates, taken once and copied back in place.
        self._weights = [p.detach().clone() for p in self.params]
        self._optimizer_state = {
            id(p): {k: v.clone() for k, v in optimizer.state[p].items()} for p in self.params if p in optimizer.state
        }
        self._group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        self._reference_gradient: list[torch.Tensor] | None = None
        self._sketch = CountSketch(config.projection_dim, config.projection_seed, cache=config.cache_projection)
        self._projected_reference: torch.Tensor | None = None
        self._tangents: dict[str, list[torch.Tensor]] = {}
        self._projected_shared = 0.0
        self._projected_shared_terms: list[float] = []
        self._shared_terms: list[float] | None = None
        # Reference losses by precision: the configured one scores, an exact audit or fallback runs in fp32.
        self._dtype = config.compute_dtype
        self._base_losses: dict[str, float] = {}
        self._shared_losses: dict[str, float] = {}
        _ = self.base_loss

    @contextlib.contextmanager
    def precision(self, dtype: str):
        """Forward and backward passes in ``dtype`` ('bfloat16': autocast; weights, optimizer state and the step
        stay fp32) while the block runs."""
        previous, self._dtype = self._dtype, dtype
        try:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                yield
        finally:
            self._dtype = previous

    @property
    def base_loss(self) -> float:
        """L0, the reference loss at the snapshot (in the current precision)."""
        if self._dtype not in self._base_losses:
            with self.precision(self._dtype):
                self._base_losses[self._dtype] = self.reference_loss(self.model)
        return self._base_losses[self._dtype]

    @property
    def centred(self) -> bool:
        """Whether ``influence`` is the centred score (``centring: shared_step``) rather than the raw one."""
        return self.config.centring == "shared_step"

    @property
    def shared_loss(self) -> float:
        """L_ref(theta + step(0)): the reference loss after the restored optimizer's zero-gradient step (the part of
        every candidate's step that does not depend on the candidate), computed once per student version."""
        if self._dtype not in self._shared_losses:
            if type(self.optimizer) is torch.optim.SGD:
                # plain SGD (no momentum, no decay) takes no step on a zero gradient
                self._shared_losses[self._dtype] = self.base_loss
            else:
                try:
                    for param in self.params:
                        param.grad = torch.zeros_like(param)
                    self.optimizer.step()
                    with self.precision(self._dtype):
                        self._shared_losses[self._dtype] = self.reference_loss(self.model)
                finally:
                    self.restore()
        return self._shared_losses[self._dtype]

    @property
    def shared_step_influence(self) -> float:
        """raw influence of the zero-gradient step, L0 - L_ref(theta + step(0)): what every raw score shares."""
        return self.base_loss - self.shared_loss

    def _exact_row(self, after: float | None) -> dict:
        """The exact scores of a candidate from its reference loss after the step (None: it took no step)."""
        if after is None:
            return {"influence_raw": 0.0, "influence_centred": 0.0, "reference_loss_after": None}
        # Both are differences of fp32 values held in doubles, so raw - centred == shared_step_influence exactly.
        return {
            "influence_raw": self.base_loss - after,
            "influence_centred": self.shared_loss - after,
            "reference_loss_after": after,
        }

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
        return encode_example(
            self.tokenizer, example.user_text, example.response, max_length=self.max_length, where=example.where
        )

    def score_one(self, example: Example | EncodedExample) -> dict:
        """Exact scores of one candidate (``_exact_row``); the state is restored afterwards."""
        encoded = self.encode(example) if isinstance(example, Example) else example
        try:
            after = self.reference_loss(self.model) if self._step(encoded) else None
        finally:
            self.restore()
        return self._exact_row(after)

    def _step(self, encoded: EncodedExample) -> bool:
        """The one optimizer step on the candidate alone; the caller restores. A tensor the loss does not reach
        gets a zero gradient, so that its part of the step is exactly the shared zero-gradient step. A candidate
        without a finite loss takes no step (False): it has no influence of its own."""
        loss = self._candidate_loss(encoded)
        if loss is None:
            return False
        loss.backward()
        for param in self.params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        self.optimizer.step()
        return True

    def score_chunk(self, encoded: list[EncodedExample]) -> list[dict]:
        """Exact scores (``_exact_row``) of several candidates with ONE reference pass.

        Each candidate takes its own real optimizer step (so the stepped weights are exactly those of
        ``score_one``), which is copied into slot i of a stacked weight buffer before the state is restored;
        then ``torch.func.vmap`` evaluates the reference set under all the stepped weights at once (every
        matmul becomes a batched one). Memory: one extra copy of the trainable weights per candidate, which
        is why ``candidate_batch_size`` bounds it. The math SDPA kernel is used under vmap, so the reference
        losses differ from ``score_one``'s in the last bits (about 1e-6 relative)."""
        stacked = [torch.empty((len(encoded), *p.shape), dtype=p.dtype, device=p.device) for p in self.params]
        stepped = []
        for slot, example in enumerate(encoded):
            try:
                stepped.append(self._step(example))
                with torch.no_grad():
                    for buffer, param in zip(stacked, self.params):
                        buffer[slot].copy_(param)
            finally:
                self.restore()

        def reference_loss(weights: dict[str, torch.Tensor]) -> torch.Tensor:
            model = lambda **inputs: functional_call(self.model, weights, (), inputs)  # noqa: E731
            return torch.stack([self.reference_loss.term(model, batch) for batch in self.reference_loss.batches]).sum()

        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            after = vmap(reference_loss)(dict(zip(self.names, stacked)))
        return [self._exact_row(float(value) if took_step else None) for value, took_step in zip(after, stepped)]

    def score(
        self,
        examples: list[Example],
        *,
        progress: Progress = no_progress,
        stage: str = "influence",
        mode: str | None = None,
        done: Mapping[str, dict] | None = None,
        on_scored: Callable[[list[dict]], None] | None = None,
        dtype: str | None = None,
    ) -> list[dict]:
        """Rows ``{id, influence, influence_raw, influence_centred, reference_loss_after}`` in input order, with
        throughput in ``self.last_rate``. ``influence`` is the centred or the raw score as ``centring`` says;
        ``reference_loss_after`` is None for the estimates (they take no step).

        ``done``: rows already scored (a checkpoint's), by candidate id; a chunk whose candidates all have one is
        not scored again, and progress starts from their count. That changes no other score: every step starts
        from the restored snapshot (weights, optimizer state; no dropout, no random draw), the cached terms
        (shared step, reference gradient, projection) are computed from that snapshot whenever they are first
        needed, and chunks are cut from the whole candidate set, whichever of them are left. ``on_scored`` gets
        each chunk's rows as soon as they are scored, before progress is reported (which may cancel the job).
        ``dtype``: the precision of this call's passes (default ``compute_dtype``; an exact audit asks for fp32)."""
        with self.precision(dtype or self.config.compute_dtype):
            return self._score(examples, progress=progress, stage=stage, mode=mode, done=done, on_scored=on_scored)

    def _score(self, examples, *, progress, stage, mode, done, on_scored) -> list[dict]:
        mode = mode or self.config.mode
        if mode not in ("exact", "first_order", "projected"):
            raise ValueError(f"unknown influence mode {mode!r}")
        encoded = [self.encode(example) for example in examples]  # every input is checked before any work
        watch = Stopwatch()
        key = "influence_centred" if self.centred else "influence_raw"
        # Copies: the caller adds to the rows it gets back, the checkpoint keeps what was scored.
        rows: list[dict | None] = [dict(done[e.id]) if done and e.id in done else None for e in examples]
        resumed = count = sum(row is not None for row in rows)
        if resumed:
            progress(stage, count, len(examples), {})
        for chunk in self._chunks(encoded, mode):
            if all(rows[i] is not None for i in chunk):
                continue
            if self.batched(mode) and mode == "exact":
                values = self.score_chunk([encoded[i] for i in chunk])
            elif self.batched(mode):
                values = [self._estimate_row(v) for v in self.directional_scores([encoded[i] for i in chunk], mode)]
            elif mode == "exact":
                values = [self.score_one(encoded[chunk[0]])]
            elif mode == "first_order":
                values = [self._estimate_row(self.first_order_one(encoded[chunk[0]]))]
            else:
                values = [self._estimate_row(self.projected_one(encoded[chunk[0]]))]
            scored = [{"id": examples[i].id, "influence": value[key], **value} for i, value in zip(chunk, values)]
            count += sum(rows[i] is None for i in chunk)
            for i, row in zip(chunk, scored):
                rows[i] = row
            if on_scored is not None:
                on_scored(scored)
            progress(stage, count, len(examples), {"cand/s": (count - resumed) / max(watch.elapsed, 1e-9)})
        self.last_rate = (len(examples) - resumed) / max(watch.elapsed, 1e-9)
        return rows

    def _estimate_row(self, centred: float | None) -> dict:
        """An estimate's row from its centred value (None: the candidate took no step); raw adds the shared term."""
        if centred is None:
            return {"influence_raw": 0.0, "influence_centred": 0.0, "reference_loss_after": None}
        return {
            "influence_raw": centred + self.estimated_shared_influence(),
            "influence_centred": centred,
            "reference_loss_after": None,
        }

    def estimated_shared_influence(self) -> float:
        """lr <g_ref, u_0>: the first-order estimate of the shared step's raw influence (exact, not projected, in
        projected mode). 0 with plain SGD."""
        if type(self.optimizer) is torch.optim.SGD:
            return 0.0
        if self._projected_reference is not None:
            return self._projected_shared
        return sum(self.shared_terms())

    def batched(self, mode: str) -> bool:
        """Whether ``mode`` scores several candidates per pass (``candidate_batch_size`` > 1).

        ``exact``, any optimizer: each candidate still takes its own real optimizer step, but the stepped weights
        of the whole chunk are stacked and the reference set is evaluated for all of them in one vmapped pass
        (``score_chunk``). The estimates only where the update direction is the gradient itself (plain SGD), so
        that lr * <v, u_z> is linear in the candidate's gradient and equals lr times the directional derivative
        of its loss along v. Adam's direction is not linear in the gradient (the second moment), so faithful
        mode needs each candidate's own gradient: one backward each."""
        if self.config.candidate_batch_size <= 1:
            return False
        return mode == "exact" or (mode in ("first_order", "projected") and type(self.optimizer) is torch.optim.SGD)

    def _chunks(self, encoded: list[EncodedExample], mode: str) -> list[list[int]]:
        """Indices of the candidates scored together. Batches are formed from length-sorted candidates (less
        padding), ties broken by the tokens, so they depend on the candidate set, not on its order."""
        if not self.batched(mode):
            return [[i] for i in range(len(encoded))]
        order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i].input_ids), encoded[i].input_ids))
        size = self.config.candidate_batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    # -- estimates -------------------------------------------------------------------------

    def reference_gradient(self) -> list[torch.Tensor]:
        """Gradient of the reference loss (mean of per-batch means) at the snapshot, computed once."""
        if self._reference_gradient is None:
            for param in self.params:
                param.grad = None
            with self.precision(self._dtype):  # also when asked for outside ``score``
                for batch in self.reference_loss.batches:
                    self.reference_loss.term(self.model, batch).backward()
            self._reference_gradient = [
                p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params
            ]
            for param in self.params:
                param.grad = None
        return self._reference_gradient

    def shared_terms(self) -> list[float]:
        """lr <g_ref_t, u_0_t> per trainable tensor t (u_0: the update direction at a zero gradient), computed once:
        what the shared step contributes to the first-order estimate, tensor by tensor."""
        if self._shared_terms is None:
            reference = self.reference_gradient()
            self._shared_terms = [
                self._group_of[id(p)]["lr"] * float(torch.dot(g.flatten(), self._shared_direction(p).flatten()))
                for p, g in zip(self.params, reference)
            ]
        return self._shared_terms

    def projected_reference(self) -> torch.Tensor:
        """``P g_ref`` (``projection_dim`` numbers), computed once. Each tensor's gradient is projected as soon as
        the backward pass produces it and then dropped, so the full reference gradient is never held; by
        linearity the sum of the projected per-batch gradients is the projection of their sum.

        The same pass prepares the centring in faithful mode: Adam's direction ``u_z`` has a large part that does
        not depend on the candidate, ``u_0`` (the direction at a zero gradient: warm-up momentum and weight
        decay). The centred estimate is ``lr <P g_ref, P (u_z - u_0)>``; its shared part ``lr <P g_ref, P u_0>`` is
        kept per tensor and subtracted, and the raw estimate adds back ``lr <g_ref, u_0>`` computed exactly,
        tensor by tensor (projecting the shared term would shift every raw score by the same random amount,
        which keeps the ranking but flips signs). With plain SGD ``u_0 = 0`` and both are 0."""
        if self._projected_reference is None:
            device = self.params[0].device
            projected = torch.zeros(self.config.projection_dim, device=device)
            adam = type(self.optimizer) is not torch.optim.SGD
            exact_shared = 0.0  # sum_t lr_t <g_ref_t, u_0>, accumulated batch by batch

            def add(index: int, param: torch.Tensor, grad: torch.Tensor) -> float:
                nonlocal exact_shared
                projected.add_(self._sketch.project(index, grad).to(projected.device))
                if adam:
                    lr = self._group_of[id(param)]["lr"]
                    exact_shared += lr * float(torch.dot(grad.flatten(), self._shared_direction(param).flatten()))
                return 0.0

            for batch in self.reference_loss.batches:
                with self.precision(self._dtype):
                    loss = self.reference_loss.term(self.model, batch)
                self._reduce_gradient(loss, add)
            self._projected_shared_terms = [
                self._group_of[id(p)]["lr"]
                * float(torch.dot(projected, self._sketch.project(i, self._shared_direction(p))))
                if adam
                else 0.0
                for i, p in enumerate(self.params)
            ]
            self._projected_reference = projected
            self._projected_shared = exact_shared
        return self._projected_reference

    def _reduce_gradient(self, loss: torch.Tensor, reduce) -> float:
        """Backpropagate ``loss`` and return the sum of ``reduce(index, param, grad)`` over the trainable tensors,
        each called as soon as its gradient is ready and the gradient dropped right after: a full gradient
        never exists at once (peak: the largest tensor's). Tensors the loss does not reach get no call, as the
        optimizer skips tensors without a gradient."""
        total = 0.0

        def hook(index: int):
            def run(param: torch.Tensor) -> None:
                nonlocal total
                total += reduce(index, param, param.grad)
                param.grad = None

            return run

        handles = [param.register_post_accumulate_grad_hook(hook(i)) for i, param in enumerate(self.params)]
        try:
            loss.backward()
        finally:
            for handle in handles:
                handle.remove()
            for param in self.params:
                param.grad = None
        return total

    def _shared_direction(self, param: torch.Tensor) -> torch.Tensor:
        """u_0: the update direction at a zero gradient (warm-up momentum and weight decay; 0 for plain SGD)."""
        return self._update_direction(param, torch.zeros_like(param))

    @torch.no_grad()
    def _update_direction(self, param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """-(the step the optimizer would take) / lr for ``param`` given ``grad``, from the snapshot state.
        The arithmetic of torch's AdamW, in place on two fresh buffers (the hot path is memory-bound)."""
        if isinstance(self.optimizer, torch.optim.SGD):
            return grad
        group = self._group_of[id(param)]
        beta1, beta2 = group["betas"]
        state = self._optimizer_state.get(id(param), {})
        step = float(state["step"]) + 1 if "step" in state else 1.0
        if "exp_avg" in state:
            exp_avg = torch.mul(state["exp_avg"], beta1).add_(grad, alpha=1 - beta1)
        else:
            exp_avg = torch.mul(grad, 1 - beta1)
        if "exp_avg_sq" in state:
            denom = torch.mul(state["exp_avg_sq"], beta2).addcmul_(grad, grad, value=1 - beta2)
        else:
            denom = torch.mul(grad, grad).mul_(1 - beta2)
        denom.sqrt_().div_((1 - beta2**step) ** 0.5).add_(group["eps"])
        direction = exp_avg.div_(denom).div_(1 - beta1**step)
        return direction.add_(param, alpha=group["weight_decay"]) if group["weight_decay"] else direction

    def _candidate_loss(self, encoded: EncodedExample) -> torch.Tensor | None:
        """The candidate's loss with a graph, or None where the exact step would be skipped (no finite loss)."""
        batch = {key: value.to(self.device) for key, value in collate([encoded], self.tokenizer.pad_token_id).items()}
        loss = self.model(**batch).loss
        return loss if torch.isfinite(loss) and loss.requires_grad else None

    def first_order_one(self, encoded: EncodedExample) -> float | None:
        """lr * <grad L_ref, u_z - u_0>: the first-order Taylor estimate of the centred score (None: no finite loss).
        A tensor the loss does not reach has u_z = u_0 and adds nothing."""
        reference = self.reference_gradient()
        shared = self.shared_terms()
        loss = self._candidate_loss(encoded)
        if loss is None:
            return None

        def inner(index: int, param: torch.Tensor, grad: torch.Tensor) -> float:
            lr = self._group_of[id(param)]["lr"]
            direction = self._update_direction(param, grad)
            return lr * float(torch.dot(reference[index].flatten(), direction.flatten())) - shared[index]

        return self._reduce_gradient(loss, inner)

    def projected_one(self, encoded: EncodedExample) -> float | None:
        """lr * <P g_ref, P (u_z - u_0)>: the centred first-order estimate after the random projection (see
        ``projected_reference``; None: no finite loss); the update is projected tensor by tensor during the
        backward pass, so neither full vector is held."""
        reference = self.projected_reference()
        shared = self._projected_shared_terms
        loss = self._candidate_loss(encoded)
        if loss is None:
            return None

        def inner(index: int, param: torch.Tensor, grad: torch.Tensor) -> float:
            lr = self._group_of[id(param)]["lr"]
            direction = self._update_direction(param, grad)
            return lr * float(torch.dot(reference, self._sketch.project(index, direction))) - shared[index]

        return self._reduce_gradient(loss, inner)

    def _tangent(self, mode: str) -> list[torch.Tensor]:
        """The vector v with estimate = <v, g_z> for every candidate z in (plain-SGD) batched mode:
        lr * g_ref for first_order, lr * P^T P g_ref for projected (built once; one gradient's memory, so in
        this mode projection saves no memory and only adds noise: it is there so that the mode means the same
        thing under both optimizers)."""
        if mode not in self._tangents:
            if mode == "first_order":
                vectors = self.reference_gradient()
            else:
                reference = self.projected_reference()
                vectors = [self._sketch.transpose(i, reference, p) for i, p in enumerate(self.params)]
            self._tangents[mode] = [self._group_of[id(p)]["lr"] * v for p, v in zip(self.params, vectors)]
        return self._tangents[mode]

    def directional_scores(self, encoded: list[EncodedExample], mode: str) -> list[float]:
        """The estimate for several candidates in one forward-mode pass (plain SGD only, see ``batched``):
        d/dt L_z(theta + t v) = <g_z, v> for each candidate's own mean response loss L_z, all rows at once
        (``torch.func.jvp`` through ``functional_call``). This costs about one forward+backward of the whole
        batch (each matmul gains two tangent matmuls), so any gain over one backward per candidate comes from batching
        itself (larger kernels, less per-call overhead): on the CPU of docs/benchmarks.md it was 0.8-0.95x as fast
        (hence candidate_batch_size 1 by default); on a GPU it is not measured.
        The math SDPA kernel is forced because the fused CPU/CUDA attention kernels have no forward-mode rule."""
        batch = {key: value.to(self.device) for key, value in collate(encoded, self.tokenizer.pad_token_id).items()}
        primals = {name: param.detach() for name, param in zip(self.names, self.params)}
        tangents = dict(zip(self.names, self._tangent(mode)))
        embedding = self.model.get_input_embeddings()
        padding_idx = getattr(embedding, "padding_idx", None)
        embedding_name = dict(zip(map(id, self.params), self.names)).get(id(embedding.weight))

        def losses(params):
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            if padding_idx is not None and embedding_name is not None:
                # nn.Embedding's backward gives its padding row no gradient from lookups (a tied output head
                # still does), and the step follows the backward; forward mode would count that row's tangent
                # wherever the pad token occurs in the text (SmolLM2 pads with <|im_end|>). So the lookup sees
                # the row without its tangent, and the rest of the model the full weight.
                weight = params[embedding_name]
                keep = (torch.arange(weight.shape[0], device=weight.device) != padding_idx).unsqueeze(1)
                lookup = torch.where(keep, weight, weight.detach())
                inputs["inputs_embeds"] = functional_call(embedding, {"weight": lookup}, (inputs.pop("input_ids"),))
            return per_example_losses(functional_call(self.model, params, (), inputs).logits, batch["labels"])

        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            _, derivatives = jvp(losses, (primals,), (tangents,))
        return [float(d) for d in derivatives]
