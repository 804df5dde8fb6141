from __future__ import annotations

import numpy as np
import pytest
from thrifty.vector_index import VectorIndex


def vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def test_exact_search_orders_by_cosine() -> None:
    x = vectors(50)
    index = VectorIndex(16)
    for i, v in enumerate(x):
        index.add(str(i), v)
    got = index.search(x[7], 5)
    expected = np.argsort(-(x @ x[7]))[:5]
    assert [int(i) for i, _ in got] == list(expected)
    assert got[0][1] == pytest.approx(1.0, abs=1e-5)


def test_remove_and_replace() -> None:
    x = vectors(10)
    index = VectorIndex(16)
    for i, v in enumerate(x):
        index.add(str(i), v)
    index.remove("3")
    index.remove("missing")
    assert len(index) == 9 and all(i != "3" for i, _ in index.search(x[3], 9))
    index.add("4", x[3])  # replace 4's vector
    assert index.search(x[3], 1)[0][0] == "4"


def test_hnsw_agrees_with_exact_search() -> None:
    x = vectors(2000, dim=32, seed=1)
    exact, hnsw = VectorIndex(32, hnsw_threshold=10**9), VectorIndex(32, hnsw_threshold=100)
    for i, v in enumerate(x):
        exact.add(str(i), v)
        hnsw.add(str(i), v)
    queries = vectors(50, dim=32, seed=2)
    agree = sum(exact.search(q, 1)[0][0] == hnsw.search(q, 1)[0][0] for q in queries)
    assert agree >= 48  # approximate search: the nearest neighbour found for (nearly) every query


def test_wrong_dimension_is_rejected() -> None:
    with pytest.raises(ValueError, match="dimension"):
        VectorIndex(16).add("a", np.zeros(8, dtype=np.float32))


def test_usearch_and_onnxruntime_load_together_in_either_order() -> None:
    """usearch 2.26.2-2.26.6 segfault when onnxruntime is imported after them (pinned out)."""
    import subprocess
    import sys

    for first, second in (("usearch.index", "onnxruntime"), ("onnxruntime", "usearch.index")):
        result = subprocess.run([sys.executable, "-c", f"import {first}; import {second}"], capture_output=True)
        assert result.returncode == 0, (first, second, result.stderr[-500:])
