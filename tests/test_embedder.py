from __future__ import annotations

import numpy as np
import pytest
from thrifty.embedder import EmbedderError, SentenceTransformerEmbedder, bundled_model_path, resolve_model
from thrifty.settings import EmbedderSettings


def test_the_default_model_is_loaded_from_the_bundled_package() -> None:
    path = bundled_model_path()
    assert path is not None and (path / "model.safetensors").is_file()
    assert resolve_model("all-MiniLM-L6-v2") == str(path)
    assert resolve_model("my/other-model") == "my/other-model"


def test_vectors_are_unit_length_and_similar_texts_are_close(embedder: SentenceTransformerEmbedder) -> None:
    a, b, c = embedder.embed(["How do I reset my password?", "How can I reset my password?",
                              "What is the capital of France?"])
    assert a is not None and b is not None and c is not None
    assert a.shape == (384,) and a.dtype == np.float32
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert float(a @ b) > 0.9 > float(a @ c)


def test_onnx_and_torch_backends_give_the_same_vectors(embedder: SentenceTransformerEmbedder) -> None:
    texts = ["Track order 48213", "A longer sentence about refunds, shipping and returns policies."]
    torch_backend = SentenceTransformerEmbedder(EmbedderSettings(backend="torch", memo_size=0))
    onnx_backend = SentenceTransformerEmbedder(EmbedderSettings(backend="onnx", memo_size=0))
    expected = np.stack(torch_backend.embed(texts))  # type: ignore[arg-type]
    got = np.stack(onnx_backend.embed(texts))  # type: ignore[arg-type]
    assert onnx_backend.backend_in_use == "onnx" and torch_backend.backend_in_use == "torch"
    assert np.allclose(expected, got, atol=1e-4)


def test_text_longer_than_the_window_gets_no_vector(embedder: SentenceTransformerEmbedder) -> None:
    long_text = "word " * 400
    short, long = embedder.embed(["short text", long_text])
    assert short is not None and long is None
    assert embedder.count_tokens(long_text) > embedder.window


def test_repeated_texts_are_memoised(embedder: SentenceTransformerEmbedder) -> None:
    first = embedder.embed(["memo me please"])[0]
    assert embedder.embed(["memo me please"])[0] is first


def test_batches_keep_order_and_duplicates() -> None:
    fresh = SentenceTransformerEmbedder(EmbedderSettings(memo_size=0))
    texts = ["b", "a", "b", "c" * 3]
    out = fresh.embed(texts)
    assert all(v is not None for v in out)
    assert np.array_equal(out[0], out[2])  # type: ignore[arg-type]


def test_a_missing_model_raises_a_clear_error() -> None:
    broken = SentenceTransformerEmbedder(EmbedderSettings(model="/nonexistent/model/dir"))
    with pytest.raises(EmbedderError, match="cannot load embedding model"):
        broken.embed(["hello"])
