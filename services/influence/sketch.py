"""The random projection of the ``projected`` influence mode: a count sketch applied tensor by tensor."""

from __future__ import annotations

import torch


def _splitmix64(value: int) -> int:
    """A well-mixed 64-bit hash, so that neighbouring (seed, tensor) pairs give unrelated generator seeds."""
    value = (value + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 31)


class CountSketch:
    """A fixed random linear map ``P: R^d -> R^k`` applied one parameter tensor at a time: a count sketch
    (Charikar et al. 2002; the sparse Johnson-Lindenstrauss / feature-hashing projection).

    Coordinate ``j`` of tensor ``t`` goes to bucket ``h(j)`` in ``[0, k)`` with sign ``s(j)`` in ``{-1, +1}``,
    both drawn uniformly and independently from a generator seeded by ``(seed, t)``:
    ``(P x)_b = sum_{h(j) = b} s(j) x_j``. Unbiased for inner products:

        E <Px, Py> = sum_j x_j y_j + sum_{j != l} x_j y_l E[s(j) s(l)] Pr[h(j) = h(l)] = <x, y>,

    because distinct coordinates have independent signs of mean 0. Its variance,
    ``(sum_{j != l} x_j^2 y_l^2 + x_j y_j x_l y_l) / k <= (|x|^2 |y|^2 + <x, y>^2) / k``, is at most that of a
    dense Gaussian sketch of the same dimension (the right-hand side): the noise falls as ``1/sqrt(k)``.

    Why not a dense sketch (LESS uses a dense Rademacher one through TRAK's CUDA kernel): even generated
    block by block, a dense ``d x k`` projection costs ``O(d k)`` per candidate (5.5e11 multiply-adds for a
    135M-parameter student at k = 4096), while the count sketch costs ``O(d)``, one ``index_add`` over the
    update, and never needs a matrix. Bucket and sign are packed in one code ``2 h(j) + (s(j) > 0)``; with
    ``cache`` the codes are kept per tensor (int16 while ``k <= 16384``: 2 bytes per parameter), otherwise
    they are regenerated from the seed at every use (no per-parameter state; one random draw per parameter
    per use). Deterministic on CPU; on CUDA ``index_add_`` accumulates in a nondeterministic order.
    """

    def __init__(self, dim: int, seed: int, *, cache: bool = True):
        self.dim = dim
        self.seed = seed
        self.cache = cache
        self._codes: dict[int, torch.Tensor] = {}
        self._code_dtype = torch.int16 if 2 * dim <= 32768 else torch.int32

    def codes(self, index: int, numel: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The packed (bucket, sign) codes of tensor ``index`` (``numel`` coordinates), as int32 (an index type that
        ``index_add_`` and indexing accept, half the memory traffic of int64)."""
        codes = self._codes.get(index)
        if codes is None or codes.numel() != numel:
            generator = torch.Generator().manual_seed(_splitmix64(self.seed * 0x100000001B3 + index) >> 1)
            codes = torch.randint(0, 2 * self.dim, (numel,), generator=generator, dtype=self._code_dtype)
            if self.cache:
                self._codes[index] = codes
        return codes.to(device=device, dtype=torch.int32)

    def project(self, index: int, values: torch.Tensor) -> torch.Tensor:
        """``P_t x`` for tensor ``index`` with values ``x`` (any shape): ``k`` numbers in fp32."""
        buckets = torch.zeros(2 * self.dim, dtype=torch.float32, device=values.device)
        buckets.index_add_(0, self.codes(index, values.numel(), values.device), values.detach().reshape(-1).float())
        return buckets[1::2] - buckets[0::2]

    def transpose(self, index: int, projected: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``P_t^T y``: the tensor (shaped and typed like ``like``) whose inner product with any ``x`` is
        ``<y, P_t x>``."""
        signed = torch.stack((-projected, projected), dim=1).reshape(-1)  # signed[2b + s] = (+1 if s else -1) * y_b
        return signed[self.codes(index, like.numel(), like.device)].reshape(like.shape).to(like.dtype)
