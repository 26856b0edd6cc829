"""Seeded random projections of gradients that preserve inner products in expectation.

Every projector maps a (batch, grad_dim) tensor to (batch, proj_dim) with E[<Pa, Pb>] = <a, b>, is fully
determined by its seed (its random numbers are drawn on the CPU from a `torch.Generator`, in fixed-size blocks,
so it is the same matrix on any device), and keeps its memory bounded: the random numbers are generated once
and kept when they fit in `cache_bytes`, otherwise regenerated block by block on every call.

- `dense`: a (proj_dim x grad_dim) matrix of independent ±1 entries divided by sqrt(proj_dim) — the Rademacher
  projection of TRAK and LESS. Cost: proj_dim x grad_dim multiply-adds per record plus generating the matrix.
- `sjlt`: a sparse Johnson–Lindenstrauss transform. The output rows are split into `s` equal blocks; every input
  coordinate is added, with a random sign, to one random row of each block, and the result is divided by
  sqrt(s). Each block is a CountSketch (unbiased for inner products), so their average is too. Cost: s additions
  per gradient coordinate — the projection is practically free next to the backward pass.
"""

from __future__ import annotations

from typing import Any

PROJECTORS = ("sjlt", "dense")
DEFAULT_PROJECTOR = "sjlt"
SJLT_NONZEROS = 4


class DenseProjector:
    """x = P g with P a seeded Rademacher matrix scaled by 1/sqrt(proj_dim)."""

    name = "dense"

    def __init__(
        self,
        grad_dim: int,
        proj_dim: int,
        seed: int,
        device: str = "cpu",
        block_bytes: int = 64 << 20,
        cache_bytes: int = 1 << 30,
    ) -> None:
        self.grad_dim = grad_dim
        self.proj_dim = min(proj_dim, grad_dim)
        self.seed = seed
        self.device = device
        self.rows_per_block = max(1, block_bytes // (4 * grad_dim))
        self._cached: Any = None
        if self.proj_dim * grad_dim * 4 <= cache_bytes:
            self._cached = list(self._blocks(reuse=False))

    def _blocks(self, reuse: bool = True) -> Any:
        """The matrix's row blocks, in order, on the target device (scaled ±1 float32).

        With `reuse`, every block is written into the same buffers (a consumer must be done with a block before
        asking for the next): allocating a fresh 64 MB block hundreds of times per call fragments the heap.
        """
        import torch

        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        scale = 1.0 / self.proj_dim**0.5
        shifts = torch.arange(8, dtype=torch.uint8)
        n_bytes = (self.grad_dim + 7) // 8
        packed = torch.empty(self.rows_per_block, n_bytes, dtype=torch.uint8)
        bits = torch.empty(self.rows_per_block, n_bytes, 8, dtype=torch.uint8)
        block = torch.empty(self.rows_per_block, self.grad_dim, dtype=torch.float32)
        for start in range(0, self.proj_dim, self.rows_per_block):
            rows = min(self.rows_per_block, self.proj_dim - start)
            if not reuse:
                packed, bits, block = packed.clone(), bits.clone(), block.clone()
            # Eight signs per random byte: drawing bytes and unpacking their bits is ~2x faster than drawing bits.
            torch.randint(0, 256, (rows, n_bytes), generator=generator, dtype=torch.uint8, out=packed[:rows])
            torch.bitwise_right_shift(packed[:rows].unsqueeze(-1), shifts, out=bits[:rows])
            bits[:rows].bitwise_and_(1)
            out = block[:rows]
            out.copy_(bits[:rows].view(rows, -1)[:, : self.grad_dim])
            out.mul_(2 * scale).sub_(scale)
            yield out.to(self.device)

    def project(self, grads: Any) -> Any:
        """Project a (batch, grad_dim) float32 tensor to (batch, proj_dim)."""
        import torch

        _check_width(grads, self.grad_dim)
        blocks = self._cached if self._cached is not None else self._blocks()
        out = torch.empty(grads.shape[0], self.proj_dim, dtype=torch.float32, device=grads.device)
        start = 0
        for block in blocks:
            torch.matmul(grads, block.T, out=out[:, start : start + block.shape[0]])
            start += block.shape[0]
        return out

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "seed": self.seed, "dim": self.proj_dim, "grad_dim": self.grad_dim}


class SparseJLProjector:
    """Sparse JL: `nonzeros` CountSketch blocks, each coordinate added with a random sign to one row per block."""

    name = "sjlt"

    def __init__(
        self,
        grad_dim: int,
        proj_dim: int,
        seed: int,
        device: str = "cpu",
        nonzeros: int = SJLT_NONZEROS,
        block_coords: int = 1 << 22,
        cache_bytes: int = 1 << 30,
    ) -> None:
        self.grad_dim = grad_dim
        self.proj_dim = min(proj_dim, grad_dim)
        self.nonzeros = max(1, min(nonzeros, self.proj_dim))
        self.seed = seed
        self.device = device
        self.block_coords = block_coords
        bounds = [round(j * self.proj_dim / self.nonzeros) for j in range(self.nonzeros + 1)]
        self.row_blocks = list(zip(bounds[:-1], bounds[1:]))
        self._cached: Any = None
        if grad_dim * self.nonzeros * 12 <= cache_bytes:  # int64 row + float32 sign per (coordinate, block)
            self._cached = list(self._blocks())

    def _blocks(self) -> Any:
        """Per block of input coordinates: (start, rows (nonzeros, n) int64, signs (nonzeros, n) float32)."""
        import torch

        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        for start in range(0, self.grad_dim, self.block_coords):
            n = min(self.block_coords, self.grad_dim - start)
            rows = torch.stack(
                [torch.randint(lo, hi, (n,), generator=generator) for lo, hi in self.row_blocks]
            )
            signs = torch.randint(0, 2, (self.nonzeros, n), generator=generator, dtype=torch.int8)
            signs = signs.to(torch.float32).mul_(2.0).sub_(1.0)
            yield start, rows.to(self.device), signs.to(self.device)

    def project(self, grads: Any) -> Any:
        """Project a (batch, grad_dim) float32 tensor to (batch, proj_dim)."""
        import torch

        _check_width(grads, self.grad_dim)
        out = torch.zeros(grads.shape[0], self.proj_dim, dtype=torch.float32, device=grads.device)
        blocks = self._cached if self._cached is not None else self._blocks()
        for start, rows, signs in blocks:
            part = grads[:, start : start + rows.shape[1]]
            for j in range(self.nonzeros):
                out.index_add_(1, rows[j], part * signs[j])
        return out.mul_(1.0 / self.nonzeros**0.5)

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "seed": self.seed,
            "dim": self.proj_dim,
            "grad_dim": self.grad_dim,
            "nonzeros": self.nonzeros,
        }


def make_projector(name: str, grad_dim: int, proj_dim: int, seed: int, device: str = "cpu") -> Any:
    """The projector registered under `name` (see PROJECTORS)."""
    from tive.errors import TiveError

    if name == "dense":
        return DenseProjector(grad_dim, proj_dim, seed, device)
    if name == "sjlt":
        return SparseJLProjector(grad_dim, proj_dim, seed, device)
    raise TiveError(f"--projector {name}: unknown; choose one of {', '.join(PROJECTORS)}")


def _check_width(grads: Any, grad_dim: int) -> None:
    if grads.shape[-1] != grad_dim:
        raise ValueError(f"gradient has {grads.shape[-1]} numbers, projector expects {grad_dim}")
