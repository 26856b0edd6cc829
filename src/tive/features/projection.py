"""Seeded random projections of gradients, scaled to preserve inner products in expectation.

`rademacher`: P is a (proj_dim x grad_dim) matrix of independent ±1 entries divided by sqrt(proj_dim), as in
TRAK/LESS, so E[<Pa, Pb>] = <a, b>. The matrix is generated on the CPU from a `torch.Generator` seeded with the
projection seed, in row blocks, so it is the same on any device and its memory stays bounded: when the whole
matrix fits in `cache_bytes` it is generated once and kept, otherwise each call regenerates it block by block.
"""

from __future__ import annotations

from typing import Any

PROJECTORS = ("rademacher",)


class RademacherProjector:
    """x = P g for a batch of gradients g (rows)."""

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
            self._cached = list(self._blocks())

    def _blocks(self) -> Any:
        """The matrix's row blocks, in order, on the target device (scaled ±1 float32)."""
        import torch

        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        scale = 1.0 / self.proj_dim**0.5
        for start in range(0, self.proj_dim, self.rows_per_block):
            rows = min(self.rows_per_block, self.proj_dim - start)
            bits = torch.randint(0, 2, (rows, self.grad_dim), generator=generator, dtype=torch.int8)
            block = bits.to(torch.float32).mul_(2 * scale).sub_(scale)
            yield block.to(self.device)

    def project(self, grads: Any) -> Any:
        """Project a (batch, grad_dim) float32 tensor to (batch, proj_dim)."""
        import torch

        if grads.shape[-1] != self.grad_dim:
            raise ValueError(f"gradient has {grads.shape[-1]} numbers, projector expects {self.grad_dim}")
        blocks = self._cached if self._cached is not None else self._blocks()
        return torch.cat([grads @ block.T for block in blocks], dim=1)

    def describe(self) -> dict[str, Any]:
        return {"type": "rademacher", "seed": self.seed, "dim": self.proj_dim, "grad_dim": self.grad_dim}
