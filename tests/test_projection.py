"""Random projections: accuracy, unbiasedness, determinism, streaming slices, provenance and the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tive.errors import TiveError
from tive.features import projection
from tive.features.projection import (
    PROJECTORS,
    DenseProjector,
    Projector,
    SparseJLProjector,
    dense_cost,
    make_projector,
    projector_names,
    register_projector,
)

# (name, options): every registered projector, sjlt also with one nonzero and with integer accumulation.
VARIANTS = [
    ("sjlt", {}),
    ("sjlt", {"nonzeros": 1}),
    ("sjlt", {"accumulate": "fixed"}),
    ("dense", {}),
    ("dense", {"cache_bytes": 0}),
]
IDS = ["sjlt", "sjlt-1", "sjlt-fixed", "dense", "dense-streamed"]


def rounding_tolerance(name: str) -> float:
    """Relative error allowed between two summation orders of the same projection.

    sjlt adds each coordinate on its own, in a fixed order: 1e-6. A dense projection is a float32 matrix product
    over up to 140,003 coordinates, whose accumulation order (and so its rounding, ~1e-6 measured) depends on the
    BLAS kernel the CPU selects: 1e-5, still five orders of magnitude below what a misplaced slice or row gives.
    """
    return 1e-5 if name == "dense" else 1e-6


def _grads(batch: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))


def _matrix(projector: Projector) -> torch.Tensor:
    """The projection matrix (proj_dim x grad_dim), column by column."""
    return projector.project(torch.eye(projector.grad_dim)).T


def _reference_hash(projector: SparseJLProjector, coordinate: int, block: int) -> int:
    """2 * row + negative from the definition, with Python integers (no overflow possible)."""
    p = (1 << 31) - 1
    segment, key = coordinate >> 30, coordinate & ((1 << 30) - 1)
    c3, c2, c1, c0 = projector._coefficients[segment][block]
    h = (((c3 * key + c2) * key + c1) * key + c0) % p
    lo, hi = projector.row_blocks[block]
    return 2 * ((h * (hi - lo)) >> 31) + (h & 1)


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_projected_norms_and_cosines_track_the_exact_ones(name: str, options: dict):
    grads = _grads(6, 20000)
    grads[1] = grads[0] + 0.3 * grads[1]  # a correlated pair
    grads[2] *= torch.linspace(0.01, 10, 20000)  # very unequal coordinates
    projected = make_projector(name, 20000, 4096, seed=7, **options).project(grads)
    assert projected.shape == (6, 4096) and projected.dtype == torch.float32
    # Relative error of a norm: standard deviation ~ 1 / sqrt(2 * 4096) = 1.1%.
    torch.testing.assert_close(projected.norm(dim=1), grads.norm(dim=1), rtol=0.05, atol=0)
    cos = torch.nn.functional.cosine_similarity(grads[:, None], grads[None], dim=-1)
    pcos = torch.nn.functional.cosine_similarity(projected[:, None], projected[None], dim=-1)
    assert (pcos - cos).abs().max() < 0.07
    assert pcos[0, 1] > 0.9


@pytest.mark.parametrize(("name", "options"), VARIANTS[:4], ids=IDS[:4])
def test_projected_inner_products_are_unbiased_over_seeds(name: str, options: dict):
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 400, generator=gen)
    b = 0.5 * a + b
    exact = float(a @ b)
    pairs = torch.stack([a, b])
    estimates = np.array([
        float(np.prod(make_projector(name, 400, 32, seed=seed, **options).project(pairs).double().numpy(), 0).sum())
        for seed in range(300)
    ])
    assert abs(estimates.mean() - exact) < 4 * estimates.std() / np.sqrt(len(estimates))
    # The spread is that of a dense projection to 32 dims: Var = (|a|^2 |b|^2 + <a,b>^2 - 2 sum a_i^2 b_i^2) / 32.
    variance = (float(a @ a) * float(b @ b) + exact**2 - 2 * float((a * a) @ (b * b))) / 32
    assert 0.7 < estimates.var() / variance < 1.4


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_same_seed_gives_the_same_bytes_and_another_seed_another_matrix(name: str, options: dict):
    grads = _grads(3, 5000)
    first = make_projector(name, 5000, 300, seed=3, **options).project(grads)
    again = make_projector(name, 5000, 300, seed=3, **options).project(grads)
    assert torch.equal(first, again)
    other = make_projector(name, 5000, 300, seed=4, **options).project(grads)
    assert not torch.allclose(first, other, rtol=0.1, atol=0.1)


def test_sjlt_matrix_is_the_hash_it_documents():
    projector = SparseJLProjector(3000, 100, seed=11, nonzeros=3)
    matrix = _matrix(projector)
    blocks = projector.row_blocks
    assert [hi - lo for lo, hi in blocks] == [33, 34, 33]
    for coordinate in (0, 1, 2, 1234, 2999):
        column = matrix[:, coordinate]
        assert (column != 0).sum() == 3
        for block, (lo, hi) in enumerate(blocks):
            packed = _reference_hash(projector, coordinate, block)
            row, negative = lo + packed // 2, packed % 2
            expected = torch.zeros(hi - lo)
            expected[row - lo] = (-1.0 if negative else 1.0) / 3**0.5
            assert torch.equal(column[lo:hi], expected)
    # Rows and signs are balanced: chi-square of the row counts of each block, share of negative signs.
    nonzero = matrix != 0
    for lo, hi in blocks:
        counts = nonzero[lo:hi].sum(dim=1).double()
        expected = 3000 / (hi - lo)
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < (hi - lo) + 5 * (2 * (hi - lo)) ** 0.5
    negative = float((matrix < 0).sum() / nonzero.sum())
    assert abs(negative - 0.5) < 0.03


def test_sjlt_hash_is_exact_beyond_2_to_the_30_coordinates():
    """Coordinates past 2^30 use their own coefficients; int64 arithmetic must match the Python integers."""
    grad_dim = (1 << 30) + 5000
    projector = SparseJLProjector(grad_dim, 8192, seed=2, cache_bytes=0)
    assert projector._cached is None
    for lo in (0, (1 << 30) - 3, grad_dim - 7):
        computed = projector._indices(lo, lo + 7, torch.device("cpu"))
        for offset in range(7):
            for block in range(projector.nonzeros):
                assert int(computed[block, offset]) == _reference_hash(projector, lo + offset, block)
    # Streaming a slice past 2^30 works without the rest of the gradient.
    part = _grads(2, 3000)
    out = torch.zeros(2, 8192, dtype=torch.float64)
    projector.project_slice(part, (1 << 30) - 1000, out)
    assert torch.allclose(out.norm(dim=1), part.double().norm(dim=1), rtol=0.1)
    with pytest.raises(ValueError, match="outside"):
        projector.project_slice(part, grad_dim - 10, out)


def test_sjlt_cache_and_on_the_fly_hash_give_the_same_bytes():
    grads = _grads(3, 70000)
    cached = SparseJLProjector(70000, 512, seed=5)
    computed = SparseJLProjector(70000, 512, seed=5, cache_bytes=0)
    assert cached._cached is not None and computed._cached is None
    assert cached._cached.dtype == torch.int16
    assert torch.equal(cached.project(grads), computed.project(grads))
    wide = SparseJLProjector(70000, 40000, seed=5, nonzeros=1)  # 80000 cells per block: int32
    assert wide._cached.dtype == torch.int32
    wide_computed = SparseJLProjector(70000, 40000, seed=5, nonzeros=1, cache_bytes=0)
    assert torch.equal(wide.project(grads), wide_computed.project(grads))


# Tilings of [0, 140003): whole; aligned to the float chunk (2^16); uneven; tiny pieces around a chunk boundary.
TILINGS = {
    "whole": [140003],
    "aligned": [65536, 65536, 8931],
    "uneven": [1, 70000, 999, 65535, 3468],
    "tiny": [65530] + [3] * 4 + [74461],
}


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("tiling", list(TILINGS))
def test_project_equals_the_sum_of_slices_over_any_tiling(name: str, options: dict, tiling: str,
                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(projection, "_FIXED_CHUNK", 1 << 15)  # several fixed-point chunks at this size
    grads = _grads(2, 140003) * torch.linspace(0.1, 3, 140003)
    projector = make_projector(name, 140003, 128, seed=9, **options)
    whole = projector.project(grads)
    out = torch.zeros(2, 128, dtype=torch.float64)
    start = 0
    for width in TILINGS[tiling]:
        assert projector.project_slice(grads[:, start : start + width], start, out) is out
        start += width
    assert start == 140003
    summed = out.to(torch.float32)
    assert ((summed - whole).norm() / whole.norm()) < rounding_tolerance(name)
    if name == "sjlt" and tiling in ("whole", "aligned"):  # every chunk sum is the same as in project
        assert torch.equal(summed, whole)


def test_slices_accumulate_into_a_float32_out_too():
    grads = _grads(2, 50000)
    projector = SparseJLProjector(50000, 256, seed=1)
    out = torch.zeros(2, 256)
    for start in range(0, 50000, 5000):
        projector.project_slice(grads[:, start : start + 5000], start, out)
    assert ((out - projector.project(grads)).norm() / out.norm()) < 1e-6


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_reruns_are_byte_identical_and_batch_splits_agree(name: str, options: dict):
    grads = _grads(7, 80000)
    projector = make_projector(name, 80000, 512, seed=2, **options)
    first = projector.project(grads)
    assert torch.equal(first, projector.project(grads))
    split = torch.cat([projector.project(grads[:1]), projector.project(grads[1:4]), projector.project(grads[4:])])
    assert ((split - first).norm(dim=1) / first.norm(dim=1)).max() < rounding_tolerance(name)
    if name == "sjlt":  # each record is summed on its own, in a fixed order: bit-identical
        assert torch.equal(split, first)


def test_fixed_point_agrees_with_float_and_is_exact_for_integers():
    grads = _grads(3, 150000) * torch.logspace(-6, 2, 150000)  # 8 decades of magnitudes
    floating = SparseJLProjector(150000, 1024, seed=4, accumulate="float").project(grads)
    fixed = SparseJLProjector(150000, 1024, seed=4, accumulate="fixed").project(grads)
    assert ((fixed - floating).norm(dim=1) / floating.norm(dim=1)).max() < 1e-6
    # Small integers are represented exactly in both: the sums are exact and the results equal.
    ints = torch.randint(-50, 50, (2, 150000), generator=torch.Generator().manual_seed(0)).float()
    a = SparseJLProjector(150000, 1024, seed=4, nonzeros=1, accumulate="float").project(ints)
    b = SparseJLProjector(150000, 1024, seed=4, nonzeros=1, accumulate="fixed").project(ints)
    assert torch.equal(a, b) and torch.equal(a, a.round())


def test_fixed_point_turns_only_a_non_finite_record_into_nan():
    grads = _grads(3, 10000)
    grads[1, 17] = float("inf")
    grads[2, 5] = float("nan")
    projector = SparseJLProjector(10000, 128, seed=0, accumulate="fixed")
    projected = projector.project(grads)
    assert torch.isfinite(projected[0]).all()
    assert torch.isnan(projected[1]).all() and torch.isnan(projected[2]).all()
    assert torch.equal(projected[0], projector.project(grads[:1])[0])


def test_dense_is_a_scaled_rademacher_matrix_independent_of_caching():
    cached = DenseProjector(70000, 64, seed=3)
    streamed = DenseProjector(70000, 64, seed=3, block_bytes=4 * 65536 * 5, cache_bytes=0)
    assert cached._cached is not None and streamed._cached is None and streamed.rows_per_block == 5
    eye = torch.eye(1000)  # columns 65000..65999 of the matrix: both sides of the first tile boundary

    def columns(projector: DenseProjector) -> torch.Tensor:
        return projector.project_slice(eye, 65000, torch.zeros(1000, 64, dtype=torch.float64))

    matrix = columns(cached)
    assert torch.equal(matrix, columns(streamed))
    assert set(matrix.unique().tolist()) == {-1 / 8, 1 / 8}  # ±1 / sqrt(proj_dim)
    assert abs(float(matrix.mean())) < 0.02  # balanced signs
    assert not torch.equal(matrix, columns(DenseProjector(70000, 64, seed=4)))


def test_describe_records_type_version_seed_and_parameters():
    for name in PROJECTORS:
        projector = make_projector(name, 5000, 300, seed=6)
        description = projector.describe()
        assert description["type"] == name and description["version"] == projector.version >= 2
        assert (description["seed"], description["dim"], description["grad_dim"]) == (6, 300, 5000)
    sjlt = SparseJLProjector(5000, 300, seed=6, nonzeros=4).describe()
    assert sjlt["nonzeros"] == 4 and "hash" in sjlt
    assert SparseJLProjector(5000, 300, seed=6).describe() != sjlt  # the default is 2
    assert DenseProjector(5000, 300, seed=6).describe()["tile"] == 1 << 16
    assert make_projector("dense", 100, 300, seed=0).describe()["dim"] == 100  # capped at the gradient size


def test_registry_lists_names_and_refuses_unknown_ones():
    assert projector_names() == PROJECTORS == ("sjlt", "dense")
    assert projection.DEFAULT_PROJECTOR == projector_names()[0]
    for name in PROJECTORS:
        assert isinstance(make_projector(name, 100, 10, seed=0), Projector)
    with pytest.raises(TiveError, match=r"--projector gaussian: unknown; choose one of sjlt, dense"):
        make_projector("gaussian", 100, 10, seed=0)
    with pytest.raises(TypeError):
        make_projector("sjlt", 100, 10, seed=0, no_such_option=1)


def test_register_projector_adds_a_projector_by_name():
    @register_projector("identity-test")
    class Identity:
        version = 1

        def __init__(self, grad_dim: int, proj_dim: int, seed: int, device: str = "cpu") -> None:
            self.grad_dim = self.proj_dim = grad_dim

        def project(self, grads: torch.Tensor) -> torch.Tensor:
            return grads.clone()

        def project_slice(self, part: torch.Tensor, start: int, out: torch.Tensor) -> torch.Tensor:
            out[:, start : start + part.shape[1]] += part
            return out

        def describe(self) -> dict:
            return {"type": self.name, "version": self.version}

        def cost(self, batch: int = 1) -> dict:
            return {}

        def estimate_seconds(self, batch: int = 1) -> float:
            return 0.0

    try:
        assert projector_names()[-1] == "identity-test"
        made = make_projector("identity-test", 4, 4, seed=0)
        assert isinstance(made, Identity) and isinstance(made, Projector) and made.name == "identity-test"
        with pytest.raises(ValueError, match="already registered"):
            register_projector("identity-test")(Identity)
    finally:
        projection._REGISTRY.pop("identity-test")
    assert projector_names() == PROJECTORS


def test_costs_count_the_work_and_estimates_are_measured():
    assert dense_cost(134_217_728, 8192) == {"random_bits": 8192 * 134_217_728.0,
                                             "multiply_adds": 8192 * 134_217_728.0}
    assert dense_cost(1000, 8192, batch=2)["multiply_adds"] == 2 * 1000 * 1000  # proj_dim capped
    streamed = DenseProjector(200000, 1024, seed=0, cache_bytes=0)
    assert streamed.cost(4)["random_bits"] == 1024 * 200000 and streamed.cost(4)["multiply_adds"] == 4 * 1024 * 200000
    assert DenseProjector(1000, 64, seed=0).cost()["random_bits"] == 0  # cached: drawn once
    sjlt = SparseJLProjector(200000, 1024, seed=0)
    assert sjlt.cost(4) == {"scatter_adds": 4 * 2 * 200000.0, "hashes": 0.0, "random_bits": 0.0, "multiply_adds": 0.0}
    assert SparseJLProjector(200000, 1024, seed=0, cache_bytes=0).cost()["hashes"] == 2 * 200000
    dense_s, sjlt_s = streamed.estimate_seconds(2), sjlt.estimate_seconds(2)
    assert 0 < sjlt_s < dense_s


def test_mismatched_shapes_and_devices_are_refused():
    projector = SparseJLProjector(1000, 64, seed=0)
    with pytest.raises(ValueError, match="expects"):
        projector.project(torch.zeros(2, 999))
    with pytest.raises(ValueError, match="out has shape"):
        projector.project_slice(torch.zeros(2, 10), 0, torch.zeros(3, 64))
    with pytest.raises(ValueError, match="outside"):
        projector.project_slice(torch.zeros(2, 10), 995, torch.zeros(2, 64))
    with pytest.raises(ValueError, match="accumulate"):
        SparseJLProjector(1000, 64, seed=0, accumulate="exact")
    meta = torch.zeros(2, 1000, device="meta")
    with pytest.raises(ValueError, match="projector on cpu"):
        projector.project(meta)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_has_the_same_matrix_and_is_deterministic():
    grads = _grads(3, 300000) * torch.linspace(0.01, 5, 300000)
    cpu_fixed = SparseJLProjector(300000, 8192, seed=8, accumulate="fixed")
    gpu = SparseJLProjector(300000, 8192, seed=8, device="cuda")
    gpu_computed = SparseJLProjector(300000, 8192, seed=8, device="cuda", cache_bytes=0)
    assert gpu.accumulate == "fixed"
    assert torch.equal(gpu._cached.cpu(), cpu_fixed._cached)  # the same hash, generated on the GPU
    on_gpu = gpu.project(grads.cuda())
    assert torch.equal(on_gpu, gpu.project(grads.cuda()))  # reruns: same bytes despite atomic scatter
    assert torch.equal(on_gpu, gpu_computed.project(grads.cuda()))
    assert torch.equal(on_gpu.cpu(), cpu_fixed.project(grads))  # integer sums: the same bytes as on the CPU
    split = torch.cat([gpu.project(grads[:1].cuda()), gpu.project(grads[1:].cuda())])
    assert torch.equal(split, on_gpu)
    cpu_float = SparseJLProjector(300000, 8192, seed=8).project(grads)
    assert ((on_gpu.cpu() - cpu_float).norm() / cpu_float.norm()) < 1e-6
    out = torch.zeros(3, 8192, dtype=torch.float64, device="cuda")
    for start in range(0, 300000, 70000):
        gpu.project_slice(grads[:, start : start + 70000].cuda(), start, out)
    assert ((out.float() - on_gpu).norm() / on_gpu.norm()) < 1e-6
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.equal(gpu.project(grads.cuda()), on_gpu)  # integer scatter is allowed in deterministic mode
    finally:
        torch.use_deterministic_algorithms(False)
    dense_cpu = DenseProjector(20000, 512, seed=1).project(grads[:, :20000])
    dense_gpu = DenseProjector(20000, 512, seed=1, device="cuda").project(grads[:, :20000].cuda())
    torch.testing.assert_close(dense_gpu.cpu(), dense_cpu, rtol=1e-4, atol=1e-4)
