"""Seeded random projections of gradients that preserve inner products in expectation.

Every projector maps a (batch, grad_dim) tensor to (batch, proj_dim) with E[<Pa, Pb>] = <a, b>, is fully
determined by its seed (the same matrix on any device), and offers two entry points:

- `project(grads)`: the whole (batch, grad_dim) gradient at once;
- `project_slice(part, start, out)`: adds the projection of coordinates [start, start + part.shape[1]) to `out`
  (batch, proj_dim), so a caller that computes a record's gradient one LoRA matrix at a time never has to hold
  the whole gradient. Summing the slices of any tiling of [0, grad_dim) into a float64 `out` gives `project`'s
  result to float32 rounding (see the projectors for what is bit-identical).

Projectors are registered by name (`register_projector`, `projector_names`, `make_projector`); every one
follows the `Projector` protocol, and `describe()` carries a `version` that changes whenever its matrix does,
so stored features are never resumed with a different matrix.

- `sjlt` (default): a sparse Johnson–Lindenstrauss transform. The output rows are split into `nonzeros` equal
  blocks; every input coordinate is added, with a random sign, to one row of each block, and the result is
  divided by sqrt(nonzeros). Each block is a CountSketch, so the average is unbiased for inner products with
  the same variance as a dense Rademacher projection. Row and sign of (coordinate, block) come from a degree-3
  polynomial hash modulo the Mersenne prime 2^31 - 1 (4-wise independent), computed with int64 tensor
  arithmetic whose values stay below 2^63: the same numbers on every device, generated directly on the target
  device. Cost: `nonzeros` scatter-additions per gradient number.
- `dense`: a (proj_dim x grad_dim) matrix of independent ±1 entries divided by sqrt(proj_dim) — the Rademacher
  projection of TRAK and LESS. Cost: proj_dim x grad_dim random bits and multiply-adds per call; only
  practical for small gradients (see `dense_cost` and `estimate_seconds`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

DEFAULT_PROJECTOR = "sjlt"
SJLT_NONZEROS = 2  # as accurate as 4 in benchmarks/projection.py (norms, cosines, instance-value Spearman), ~40% cheaper at 134M

# sjlt: the hash. Keys are coordinates modulo 2^30 (every 2^30 coordinates get their own coefficients), so key,
# coefficients and every intermediate stay small enough for exact int64 arithmetic (see SparseJLProjector._hash).
_MERSENNE = (1 << 31) - 1
_KEY_BITS = 30
# sjlt: coordinates are accumulated in chunks aligned to multiples of these sizes. They fix the rounding, not the
# matrix: float32 sums of at most _FLOAT_CHUNK numbers per chunk (then float64), and for the integer path one
# power-of-two scale per (record, chunk) — constant on every device so that its results are bit-identical there.
_FLOAT_CHUNK = 1 << 16
_FIXED_CHUNK = 1 << 22
_FIXED_BITS = 61  # |sum of one chunk| < 2^61 in fixed point
# dense: the matrix is generated in column tiles of this width, each from its own generator.
_DENSE_TILE = 1 << 16


@runtime_checkable
class Projector(Protocol):
    """What the features stage needs from a random projection."""

    name: str
    version: int
    grad_dim: int
    proj_dim: int

    def project(self, grads: Any) -> Any:
        """(batch, grad_dim) float32 -> (batch, proj_dim) float32, on the gradient's device."""

    def project_slice(self, part: Any, start: int, out: Any) -> Any:
        """Add the projection of coordinates [start, start + part.shape[1]) to `out` (batch, proj_dim); return it."""

    def describe(self) -> dict[str, Any]:
        """Provenance: type, version, seed, dim, grad_dim and the matrix's parameters (JSON-serializable)."""

    def cost(self, batch: int = 1) -> dict[str, float]:
        """Work of one `project` call on `batch` records: counts, not seconds."""

    def estimate_seconds(self, batch: int = 1) -> float:
        """Measured estimate of one warm `project` call on `batch` records on this projector's device."""


_REGISTRY: dict[str, Callable[..., Projector]] = {}


def register_projector(name: str) -> Callable[[Any], Any]:
    """Class decorator: make a projector available to `make_projector` (and the CLI) under `name`.

    The class is called as cls(grad_dim, proj_dim, seed, device, **options).
    """

    def register(cls: Any) -> Any:
        if name in _REGISTRY:
            raise ValueError(f"projector {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return register


def projector_names() -> tuple[str, ...]:
    """The registered projectors, in registration order (the default first)."""
    return tuple(_REGISTRY)


def projector_version(name: str) -> int:
    """The version of projector `name`'s matrix, known before its gradient size is (for a store's provenance)."""
    from tive.errors import TiveError

    if name not in _REGISTRY:
        raise TiveError(f"--projector {name}: unknown; choose one of {', '.join(projector_names())}")
    return int(_REGISTRY[name].version)  # type: ignore[attr-defined]


def make_projector(
    name: str, grad_dim: int, proj_dim: int, seed: int, device: Any = "cpu", **options: Any
) -> Projector:
    """The projector registered under `name`; `options` go to its constructor."""
    from tive.errors import TiveError

    factory = _REGISTRY.get(name)
    if factory is None:
        raise TiveError(f"--projector {name}: unknown; choose one of {', '.join(projector_names())}")
    return factory(grad_dim, proj_dim, seed, device, **options)


def dense_cost(grad_dim: int, proj_dim: int, batch: int = 1) -> dict[str, float]:
    """Work of one uncached dense projection: random bits drawn and multiply-adds (proj_dim is capped)."""
    proj_dim = min(proj_dim, grad_dim)
    return {"random_bits": float(proj_dim * grad_dim), "multiply_adds": float(batch * proj_dim * grad_dim)}


def _derived_seed(*parts: Any) -> int:
    """A 64-bit number from `parts`, independent of torch, numpy and Python's hash randomization."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _check_slice(part: Any, start: int, out: Any, grad_dim: int, proj_dim: int) -> None:
    if part.dim() != 2:
        raise ValueError(f"gradient slice must be (batch, numbers), got shape {tuple(part.shape)}")
    if start < 0 or start + part.shape[1] > grad_dim:
        raise ValueError(
            f"gradient slice [{start}, {start + part.shape[1]}) is outside the projector's {grad_dim} numbers"
        )
    if tuple(out.shape) != (part.shape[0], proj_dim):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {(part.shape[0], proj_dim)}")
    if out.device != part.device:
        raise ValueError(f"out is on {out.device}, the gradient slice on {part.device}")


def _check_width(grads: Any, grad_dim: int) -> None:
    if grads.dim() != 2 or grads.shape[-1] != grad_dim:
        raise ValueError(f"gradient has shape {tuple(grads.shape)}, projector expects (batch, {grad_dim})")


def _same_device(a: Any, b: Any) -> bool:
    import torch

    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type == "cuda":  # "cuda" means the current device
        return (a.index if a.index is not None else torch.cuda.current_device()) == (
            b.index if b.index is not None else torch.cuda.current_device()
        )
    return a.index is None or b.index is None or a.index == b.index


def _aligned_pieces(start: int, stop: int, size: int) -> Any:
    """[start, stop) cut at the multiples of `size`: (piece_start, piece_stop) pairs."""
    while start < stop:
        end = min(stop, (start // size + 1) * size)
        yield start, end
        start = end


def _time_call(fn: Callable[[], Any], device: Any) -> float:
    """Seconds of one warm call of `fn` (after one untimed call), synchronized on CUDA."""
    import torch

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------- sjlt
@register_projector("sjlt")
class SparseJLProjector:
    """Sparse JL: `nonzeros` CountSketch blocks, each coordinate added with a hashed sign to one row per block.

    The hash of (coordinate, block) is packed into one small integer, 2 * row + (1 if the sign is negative),
    row counted within the block, and kept on the device — (nonzeros, grad_dim) int16 while
    2 * ceil(proj_dim / nonzeros) <= 32768, else int32 — when it fits in `cache_bytes`; otherwise it is
    recomputed on the fly, chunk by chunk (~25 integer operations per coordinate and block). Positive and negative
    terms are summed in separate cells, so projecting multiplies nothing: one scatter-addition per number, block
    and record.

    `accumulate` chooses how the terms are summed:

    - "float": float32 scatter-additions in chunks of 2^16 coordinates aligned to multiples of 2^16, chunk sums
      accumulated in float64. On CPU torch's scatter is serial per record and output row, so the result is the
      same bytes on every run and for every batch split.
    - "fixed": per record and chunk of 2^22 coordinates, the numbers are scaled by a power of two into int64
      fixed point (|chunk sum| < 2^61; resolution 2^-38 of the chunk's largest magnitude) and summed exactly as
      integers, so neither the order of additions nor CUDA's atomic scatter can change the result: the same
      bytes on every run, every device and every batch split. Non-finite input gives a NaN row.
    - "auto" (default): "float" on CPU, "fixed" elsewhere.
    """

    name = "sjlt"
    version = 3  # 2: 4 nonzeros by default; 3: 2

    def __init__(
        self,
        grad_dim: int,
        proj_dim: int,
        seed: int,
        device: Any = "cpu",
        nonzeros: int = SJLT_NONZEROS,
        cache_bytes: int = 2 << 30,
        accumulate: str = "auto",
        block_coords: int | None = None,
    ) -> None:
        import torch

        if grad_dim < 1 or proj_dim < 1:
            raise ValueError(f"grad_dim and proj_dim must be at least 1, got {grad_dim} and {proj_dim}")
        if accumulate not in ("auto", "float", "fixed"):
            raise ValueError(f"accumulate={accumulate!r}: choose auto, float or fixed")
        self.grad_dim = grad_dim
        self.proj_dim = min(proj_dim, grad_dim)
        self.nonzeros = max(1, min(nonzeros, self.proj_dim))
        self.seed = seed
        self.device = torch.device(device)
        self.accumulate = accumulate if accumulate != "auto" else "float" if self.device.type == "cpu" else "fixed"
        self.scale = 1.0 / math.sqrt(self.nonzeros)
        bounds = [round(j * self.proj_dim / self.nonzeros) for j in range(self.nonzeros + 1)]
        self.row_blocks = list(itertools.pairwise(bounds))
        self._rows = [hi - lo for lo, hi in self.row_blocks]
        self._width = max(self._rows)  # rows of the widest block: cells are (record, block, 2 * width)
        # Where block j's row r lands in the output: j * width + r for r < rows of j (all, if the blocks are equal).
        self._layout: dict[Any, Any] = {}
        # 4 coefficients per (block, 2^30 coordinates), uniform in [0, 2^31 - 1).
        n_segments = ((grad_dim - 1) >> _KEY_BITS) + 1
        self._coefficients = [
            [
                [_derived_seed("tive-sjlt", self.version, seed, block, segment, k) % _MERSENNE for k in range(4)]
                for block in range(self.nonzeros)
            ]
            for segment in range(n_segments)
        ]
        self._constants: dict[Any, Any] = {}
        self._hash_chunk = block_coords or (1 << 16 if self.device.type == "cpu" else _FIXED_CHUNK)
        self._index_dtype = torch.int16 if 2 * self._width <= 1 << 15 else torch.int32
        item = 2 if self._index_dtype == torch.int16 else 4
        self._cached: Any = None
        if self.nonzeros * grad_dim * item <= cache_bytes:
            cached = torch.empty(self.nonzeros, grad_dim, dtype=self._index_dtype, device=self.device)
            for lo, hi in _aligned_pieces(0, grad_dim, self._hash_chunk):
                cached[:, lo:hi] = self._indices(lo, hi, self.device)
            self._cached = cached

    def _hash_constants(self, segment: int, device: Any) -> Any:
        import torch

        key = (segment, str(device))
        if key not in self._constants:
            columns = list(zip(*self._coefficients[segment]))  # c3, c2, c1, c0: one value per block each
            as_column = [torch.tensor(c, dtype=torch.int64, device=device).unsqueeze(1) for c in columns]
            rows = torch.tensor(self._rows, dtype=torch.int64, device=device).unsqueeze(1)
            self._constants[key] = (*as_column, rows)
        return self._constants[key]

    # The hash. Keys k < 2^30 (coordinate modulo 2^30), coefficients c < p = 2^31 - 1:
    # h = ((c3 k + c2) k + c1) k + c0 mod p by Horner's rule, folding t -> (t & p) + (t >> 31) (same residue) after
    # every product, so every intermediate is below 2^63 (products < (2^32 + 2^30) * 2^30) and int64 arithmetic
    # is exact on every device. Then row = (h * rows) >> 31 (uniform up to rows / 2^31) and negative = h & 1,
    # independent of the row to the same precision.
    def _hash(self, lo: int, hi: int, device: Any) -> Any:
        """(nonzeros, hi - lo) int64: 2 * row + negative for coordinates [lo, hi), within one 2^30 segment."""
        import torch

        segment = lo >> _KEY_BITS
        if (hi - 1) >> _KEY_BITS != segment:
            raise ValueError(f"[{lo}, {hi}) crosses a multiple of 2^{_KEY_BITS}")
        c3, c2, c1, c0, rows = self._hash_constants(segment, device)
        base = segment << _KEY_BITS
        key = torch.arange(lo - base, hi - base, device=device).unsqueeze(0)
        t = key * c3  # (nonzeros, n)
        low = torch.empty_like(t)

        def fold(t: Any) -> Any:
            torch.bitwise_and(t, _MERSENNE, out=low)
            return t.bitwise_right_shift_(31).add_(low)

        fold(t).add_(c2).mul_(key)
        fold(t).add_(c1).mul_(key)
        fold(t).add_(c0)
        fold(t)  # t < 2^31 + 4, the same residue as h
        torch.add(t, 1, out=low).bitwise_right_shift_(31)  # 1 where t >= p
        t.sub_(low.mul_(_MERSENNE))  # t = h in [0, p)
        torch.mul(t, rows, out=low).bitwise_right_shift_(31).mul_(2)
        return low.add_(t.bitwise_and_(1))

    def _indices(self, lo: int, hi: int, device: Any) -> Any:
        """(nonzeros, hi - lo) int64 packed hashes of coordinates [lo, hi), computed (not read from the cache)."""
        import torch

        parts = [self._hash(a, b, device) for a, b in _aligned_pieces(lo, hi, 1 << _KEY_BITS)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _chunk_indices(self, lo: int, hi: int, device: Any, buffer: Any) -> Any:
        """int64 packed hashes of [lo, hi): from the cache (into `buffer`) or computed."""
        if self._cached is None:
            return self._indices(lo, hi, device)
        out = buffer[:, : hi - lo]
        out.copy_(self._cached[:, lo:hi])
        return out

    def project(self, grads: Any) -> Any:
        """Project a (batch, grad_dim) float32 tensor to (batch, proj_dim) float32."""
        import torch

        _check_width(grads, self.grad_dim)
        out = torch.zeros(grads.shape[0], self.proj_dim, dtype=torch.float64, device=grads.device)
        return self.project_slice(grads, 0, out).to(torch.float32)

    def project_slice(self, part: Any, start: int, out: Any) -> Any:
        """Add the projection of coordinates [start, start + part.shape[1]) of a (batch, n) tensor to `out`.

        `out` is (batch, proj_dim) on the gradient's device; float64 for sums of many slices. For tilings whose
        boundaries are multiples of 2^16 ("float") or 2^22 ("fixed") coordinates, every chunk sum is the same as
        in `project`, so a float64 `out` agrees with it to float64 rounding; other tilings agree to float32
        rounding of the chunk sums (~1e-7 relative).
        """
        import torch

        _check_slice(part, start, out, self.grad_dim, self.proj_dim)
        if not _same_device(part.device, self.device):
            raise ValueError(f"gradient is on {part.device}, projector on {self.device}")
        batch, stop = part.shape[0], start + part.shape[1]
        if batch == 0 or stop == start:
            return out
        part = part.float()
        s, cells = self.nonzeros, 2 * self._width  # cell 2r: positive terms of row r, 2r + 1: negative terms
        if self.accumulate == "float":
            chunk_size = _FLOAT_CHUNK
            buffer = torch.empty(batch, s, cells, dtype=torch.float32, device=part.device)
            total = torch.zeros(batch, s, cells, dtype=torch.float64, device=part.device)
        else:
            chunk_size = _FIXED_CHUNK
            buffer = torch.empty(batch, s, cells, dtype=torch.int64, device=part.device)
            total = torch.zeros(batch, s, self._width, dtype=torch.float64, device=part.device)
        index = torch.empty(s, min(chunk_size, stop - start), dtype=torch.int64, device=part.device)
        for lo, hi in _aligned_pieces(start, stop, chunk_size):
            n = hi - lo
            rows = self._chunk_indices(lo, hi, part.device, index).unsqueeze(0).expand(batch, s, n)
            chunk = part[:, lo - start : hi - start]
            buffer.zero_()
            if self.accumulate == "float":
                buffer.scatter_add_(2, rows, chunk.unsqueeze(1).expand(batch, s, n))
                total.add_(buffer)
            else:
                top = chunk.abs().amax(dim=1)
                finite = torch.isfinite(top)
                # |x| < 2^exponent, so |x| * 2^(61 - bits(n) - exponent) summed n times stays below 2^61.
                exponent = torch.frexp(torch.where(finite, top, torch.zeros_like(top))).exponent.long()
                shift = _FIXED_BITS - n.bit_length() - exponent
                fixed = (chunk.double() * _power_of_two(shift).unsqueeze(1)).nan_to_num_(0.0, 0.0, 0.0)
                fixed = fixed.to(torch.int64).unsqueeze(1).expand(batch, s, n)
                with _integer_scatter(part.device):
                    buffer.scatter_add_(2, rows, fixed)
                net = buffer[..., 0::2] - buffer[..., 1::2]  # exact: |each| < 2^61
                # NaN for a record with a non-finite number in the chunk, else 0.
                poison = torch.where(finite, 0.0, math.nan).to(torch.float64).view(batch, 1, 1)
                total.add_(net.double().mul_(_power_of_two(-shift).view(batch, 1, 1)).add_(poison))
        if self.accumulate == "float":
            total = total[..., 0::2] - total[..., 1::2]
        out.add_(self._to_output(total.mul_(self.scale)))
        return out

    def _to_output(self, net: Any) -> Any:
        """(batch, nonzeros, width) -> (batch, proj_dim): block j's row r is output row lo_j + r."""
        import torch

        flat = net.reshape(net.shape[0], -1)
        if all(rows == self._width for rows in self._rows):
            return flat
        key = str(net.device)
        if key not in self._layout:
            keep = [j * self._width + r for j, rows in enumerate(self._rows) for r in range(rows)]
            self._layout[key] = torch.tensor(keep, dtype=torch.int64, device=net.device)
        return flat[:, self._layout[key]]

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "version": self.version,
            "seed": self.seed,
            "dim": self.proj_dim,
            "grad_dim": self.grad_dim,
            "nonzeros": self.nonzeros,
            "hash": "degree-3 polynomial mod 2^31-1 per block, blake2b coefficients",
        }

    def cost(self, batch: int = 1) -> dict[str, float]:
        return {
            "scatter_adds": float(batch * self.nonzeros * self.grad_dim),
            "hashes": 0.0 if self._cached is not None else float(self.nonzeros * self.grad_dim),
            "random_bits": 0.0,
            "multiply_adds": 0.0,
        }

    def estimate_seconds(self, batch: int = 1) -> float:
        """Time one probe slice of up to 2^20 coordinates and scale it to the whole gradient."""
        import torch

        n = min(self.grad_dim, 1 << 20)
        probe = torch.ones(batch, n, device=self.device)
        out = torch.zeros(batch, self.proj_dim, dtype=torch.float64, device=self.device)
        return _time_call(lambda: self.project_slice(probe, 0, out), self.device) * self.grad_dim / n


class _integer_scatter:
    """Around an int64 scatter-add on CUDA: torch's deterministic mode refuses scatter_add_ there because float
    atomics are nondeterministic, but integer addition is exact and order-independent, so the mode is paused."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.paused: tuple[bool, bool] | None = None

    def __enter__(self) -> None:
        import torch

        if self.device.type != "cpu" and torch.are_deterministic_algorithms_enabled():
            self.paused = (True, torch.is_deterministic_algorithms_warn_only_enabled())
            torch.use_deterministic_algorithms(False)

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.paused is not None:
            torch.use_deterministic_algorithms(True, warn_only=self.paused[1])


def _power_of_two(exponent: Any) -> Any:
    """Exactly 2.0 ** exponent as float64 (|exponent| < 1023), built from its bits: the same on every device."""
    import torch

    return ((exponent + 1023) << 52).view(torch.float64)


# --------------------------------------------------------------------------------------------------------- dense
@register_projector("dense")
class DenseProjector:
    """x = P g with P a seeded Rademacher matrix scaled by 1/sqrt(proj_dim).

    P is defined in column tiles of 2^16 coordinates: tile t's (proj_dim x width) ±1 entries are the bits, row
    by row, of bytes drawn by a CPU `torch.Generator` seeded from (seed, t), so any column slice of P can be
    generated without the rest. The matrix is kept on the device when it fits in `cache_bytes`, otherwise
    regenerated on every call in row blocks of at most `block_bytes`; neither changes it.
    """

    name = "dense"
    version = 2

    def __init__(
        self,
        grad_dim: int,
        proj_dim: int,
        seed: int,
        device: Any = "cpu",
        block_bytes: int = 64 << 20,
        cache_bytes: int = 1 << 30,
    ) -> None:
        import torch

        if grad_dim < 1 or proj_dim < 1:
            raise ValueError(f"grad_dim and proj_dim must be at least 1, got {grad_dim} and {proj_dim}")
        self.grad_dim = grad_dim
        self.proj_dim = min(proj_dim, grad_dim)
        self.seed = seed
        self.device = torch.device(device)
        self.rows_per_block = max(1, block_bytes // (4 * min(grad_dim, _DENSE_TILE)))
        self._cached: Any = None
        if self.proj_dim * grad_dim * 4 <= cache_bytes:
            self._cached = torch.empty(self.proj_dim, grad_dim, device=self.device)
            for lo, hi in _aligned_pieces(0, grad_dim, _DENSE_TILE):
                for row, block in self._tile_blocks(lo // _DENSE_TILE):
                    self._cached[row : row + block.shape[0], lo:hi] = block

    def _tile_blocks(self, tile: int) -> Any:
        """Tile `tile`'s row blocks, in order, on the device: (first row, scaled ±1 float32 block).

        Every block is written into the same buffers (a consumer must be done with a block before asking for the
        next): allocating a fresh 64 MB block hundreds of times per call fragments the heap.
        """
        import torch

        width = min(_DENSE_TILE, self.grad_dim - tile * _DENSE_TILE)
        tile_seed = _derived_seed("tive-dense", self.version, self.seed, tile) >> 1
        generator = torch.Generator(device="cpu").manual_seed(tile_seed)
        scale = 1.0 / self.proj_dim**0.5
        shifts = torch.arange(8, dtype=torch.uint8)
        n_bytes = (width + 7) // 8
        rows_per_block = min(self.rows_per_block, self.proj_dim)
        packed = torch.empty(rows_per_block, n_bytes, dtype=torch.uint8)
        bits = torch.empty(rows_per_block, n_bytes, 8, dtype=torch.uint8)
        block = torch.empty(rows_per_block, width, dtype=torch.float32)
        for start in range(0, self.proj_dim, rows_per_block):
            rows = min(rows_per_block, self.proj_dim - start)
            # Eight signs per random byte: drawing bytes and unpacking their bits is ~2x faster than drawing bits.
            torch.randint(0, 256, (rows, n_bytes), generator=generator, dtype=torch.uint8, out=packed[:rows])
            torch.bitwise_right_shift(packed[:rows].unsqueeze(-1), shifts, out=bits[:rows])
            bits[:rows].bitwise_and_(1)
            out = block[:rows]
            out.copy_(bits[:rows].view(rows, -1)[:, :width])
            out.mul_(2 * scale).sub_(scale)
            yield start, out.to(self.device)

    def project(self, grads: Any) -> Any:
        """Project a (batch, grad_dim) float32 tensor to (batch, proj_dim) float32."""
        import torch

        _check_width(grads, self.grad_dim)
        out = torch.zeros(grads.shape[0], self.proj_dim, dtype=torch.float64, device=grads.device)
        return self.project_slice(grads, 0, out).to(torch.float32)

    def project_slice(self, part: Any, start: int, out: Any) -> Any:
        """Add P[:, start:start + n] @ part.T to `out` (batch, proj_dim); float64 `out` for sums of many slices.

        Uncached, a slice costs the generation of the tiles it touches (whole tiles of 2^16 columns).
        """
        _check_slice(part, start, out, self.grad_dim, self.proj_dim)
        self._check_device(part)
        stop = start + part.shape[1]
        part = part.float()
        for lo, hi in _aligned_pieces(start, stop, _DENSE_TILE):  # float32 products of <= 2^16 terms, float64 sums
            chunk = part[:, lo - start : hi - start]
            if self._cached is not None:
                out.add_(chunk @ self._cached[:, lo:hi].T)
                continue
            tile = lo // _DENSE_TILE
            offset = tile * _DENSE_TILE
            for row, block in self._tile_blocks(tile):
                out[:, row : row + block.shape[0]] += chunk @ block[:, lo - offset : hi - offset].T
        return out

    def _check_device(self, grads: Any) -> None:
        if not _same_device(grads.device, self.device):
            raise ValueError(f"gradient is on {grads.device}, projector on {self.device}")

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "version": self.version,
            "seed": self.seed,
            "dim": self.proj_dim,
            "grad_dim": self.grad_dim,
            "tile": _DENSE_TILE,
            "generator": "torch.Generator(cpu) bytes per tile, blake2b tile seeds",
        }

    def cost(self, batch: int = 1) -> dict[str, float]:
        counts = dense_cost(self.grad_dim, self.proj_dim, batch)
        if self._cached is not None:
            counts["random_bits"] = 0.0
        return {**counts, "scatter_adds": 0.0, "hashes": 0.0}

    def estimate_seconds(self, batch: int = 1) -> float:
        """Time one tile's first row block (generation + multiply) and scale it to the whole matrix."""
        import torch

        width = min(_DENSE_TILE, self.grad_dim)
        probe = torch.ones(batch, width, device=self.device)
        if self._cached is not None:
            cached = self._cached
            return _time_call(lambda: probe @ cached[:, :width].T, self.device) * self.grad_dim / width

        def one_block() -> Any:
            _, block = next(iter(self._tile_blocks(0)))
            return probe @ block.T

        rows = min(self.rows_per_block, self.proj_dim)
        return _time_call(one_block, self.device) * (self.proj_dim / rows) * (self.grad_dim / width)


PROJECTORS = projector_names()  # the built-in projectors; projector_names() also lists ones registered later
