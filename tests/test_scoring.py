"""Tests for tive.scoring: task values and streamed instance values."""

from __future__ import annotations

import numpy as np
import pytest

from tive.errors import TiveError
from tive.scoring import instance_values, instance_values_pairwise, task_values


def _random_features(seed: int = 0, d: int = 16) -> tuple[np.ndarray, list[str]]:
    """Features for tasks of sizes 1, 2, 7, 23 and 40, shuffled, with one zero row and a shared offset
    (so cosines are not all near 0)."""
    rng = np.random.default_rng(seed)
    sizes = {"a": 23, "b": 1, "c": 7, "d": 40, "e": 2}
    tasks = [name for name, size in sizes.items() for _ in range(size)]
    rng.shuffle(tasks)
    x = rng.normal(size=(len(tasks), d)) + rng.normal(size=d)
    x[5] = 0.0
    return x, tasks


def test_instance_values_match_pairwise() -> None:
    x, tasks = _random_features()
    fast = instance_values(x, tasks, chunk_rows=10)
    slow = instance_values_pairwise(x, tasks)
    assert fast.dtype == np.float64
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-9)
    assert fast[5] == 0.0  # the zero row has cosine 0 with everything
    single = tasks.index("b")
    assert fast[single] == pytest.approx(1.0)  # a task of one record: cos(x, x) = 1
    assert np.all(fast <= 1.0 + 1e-12) and np.all(fast >= -1.0 - 1e-12)


def test_instance_values_hand_example() -> None:
    # Task t: (1,0), (0,1), (1,1); normalised mean = ((1 + 1/√2) / 3, (1 + 1/√2) / 3).
    x = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [3.0, 4.0]])
    values = instance_values(x, ["t", "t", "t", "u"])
    c = 1 / np.sqrt(2)
    expected_first = (1 + 0 + c) / 3
    expected_third = (c + c + 1) / 3
    np.testing.assert_allclose(values, [expected_first, expected_first, expected_third, 1.0], atol=1e-12)


def test_instance_values_memmap_and_chunking(tmp_path) -> None:
    x, tasks = _random_features(seed=1, d=12)
    path = tmp_path / "features.f32"
    store = np.memmap(path, dtype=np.float32, mode="w+", shape=x.shape)
    store[:] = x
    store.flush()
    del store
    features = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    reference = instance_values_pairwise(np.asarray(features, dtype=np.float64), tasks)
    results = [instance_values(features, tasks, chunk_rows=k) for k in (1, 3, 7, 16384)]
    for result in results:
        np.testing.assert_allclose(result, reference, rtol=0, atol=1e-9)
        np.testing.assert_allclose(result, results[0], rtol=0, atol=1e-12)


def test_instance_values_float16() -> None:
    """float16 features are scored with float32 products: within 1e-6 of float64 arithmetic on the same numbers,
    far below what storing them in float16 changed (~1e-3)."""
    x, tasks = _random_features(seed=2, d=512)
    half = x.astype(np.float16)
    exact = instance_values_pairwise(half.astype(np.float64), tasks)
    fast = instance_values(half, tasks, chunk_rows=5)
    np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-6)
    storage_error = np.abs(instance_values_pairwise(x, tasks) - exact).max()
    assert np.abs(fast - exact).max() < storage_error / 10


def test_instance_values_errors() -> None:
    x, tasks = _random_features()
    with pytest.raises(TiveError, match="task names"):
        instance_values(x, tasks[:-1])
    with pytest.raises(TiveError, match="shape"):
        instance_values(x[:, 0], tasks)
    with pytest.raises(TiveError, match="chunk_rows"):
        instance_values(x, tasks, chunk_rows=0)
    bad = x.copy()
    bad[17, 3] = np.nan
    with pytest.raises(TiveError, match="row 17"):
        instance_values(bad, tasks, chunk_rows=4)
    assert instance_values(np.zeros((0, 4)), []).shape == (0,)


def test_task_values_hand_computed() -> None:
    tasks = ["vqa", "ocr", "vqa", "chat", "ocr", "vqa"]
    norms = np.array([1.0, 10.0, 2.0, 5.0, 20.0, 6.0])
    result = task_values(tasks, norms)
    assert list(result) == ["chat", "ocr", "vqa"]
    assert result == pytest.approx({"chat": 5.0, "ocr": 15.0, "vqa": 3.0})


def test_task_values_errors() -> None:
    with pytest.raises(TiveError, match="row 2"):
        task_values(["a", "a", "b"], np.array([1.0, 2.0, np.inf]))
    with pytest.raises(TiveError, match="row 0"):
        task_values(["a"], np.array([np.nan]))
    with pytest.raises(TiveError, match="task names"):
        task_values(["a", "b"], np.array([1.0]))
