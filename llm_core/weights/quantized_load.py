"""Load a checkpoint straight into int8 or bf16: the float32 model never exists in memory.

``load_model`` + ``quantize_model`` first maps the whole float32 checkpoint (540 MB for SmolLM2-135M): every
page it reads stays resident while the mapping lives, beside the int8 copies, so an int8 process peaked above
an fp32 one. Here each tensor is read from the safetensors file with plain ``readinto`` (the OS page cache is
not part of our resident set), a few rows at a time, and only its int8 (or bf16) form is kept:

    file rows (~2 MiB) float32 -> per-row int8 + scale -> next rows        # one small reused buffer

The model skeleton is built on the 'meta' device (no random init, no memory) and filled module by module.
Sources without a checkpoint folder (Hugging Face folders, .gguf files, the default model's first start) go
through ``load_model`` + the in-place :func:`llm_core.generation.quantize.quantize_model`.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from llm_core.generation.quantize import (
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    Mode,
    parse_mode,
    quantize_model,
    quantize_rows_into,
)

__all__ = ["SafetensorsFile", "load_quantized", "load_checkpoint_quantized", "checkpoint_folder"]

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
BLOCK_BYTES = 2 << 20  # float32 bytes read per step from a large 2-D tensor (few small ops, a small buffer)


def block_rows(in_features: int) -> int:
    """Rows per block: ~2 MiB of float32 (910 rows of SmolLM2's 576 columns)."""
    return max(1, BLOCK_BYTES // (4 * max(1, in_features)))


class SafetensorsFile:
    """A safetensors file read tensor by tensor (or row block by row block) into fresh tensors, without mmap."""

    def __init__(self, path: str | Path, source: str | None = None) -> None:
        self.path = Path(path)
        self.source = source or str(self.path)
        self._f = open(self.path, "rb")  # noqa: SIM115 - closed by close()/__exit__
        try:
            self._parse()
        except BaseException:
            self._f.close()
            raise

    def _bad(self, why: str) -> ValueError:
        return ValueError(f"{self.source}: corrupt or not a safetensors file ({why})")

    def _parse(self) -> None:
        size = self.path.stat().st_size
        head = self._f.read(8)
        if len(head) < 8:
            raise self._bad("shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise self._bad(f"header length {n} does not fit a {size}-byte file")
        try:
            header = json.loads(self._f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._bad(f"header is not JSON: {e}") from None
        if not isinstance(header, dict):
            raise self._bad("header is not a JSON object")
        header.pop("__metadata__", None)
        self._base = 8 + n
        self._scratch: list[torch.Tensor] = [torch.empty(0, dtype=torch.uint8) for _ in range(3)]
        self._info: dict[str, tuple[torch.dtype, tuple[int, ...], int]] = {}
        for name, d in header.items():
            try:
                dtype, shape, (b, e) = _DTYPES[d["dtype"]], tuple(int(s) for s in d["shape"]), d["data_offsets"]
            except (KeyError, TypeError, ValueError) as err:
                raise self._bad(f"bad entry for tensor {name!r}: {err!r}") from None
            numel = 1
            for s in shape:
                numel *= s
            if e - b != numel * dtype.itemsize or b < 0 or self._base + e > size:
                raise self._bad(f"tensor {name!r} has bytes {b}..{e}, which do not fit its shape {shape} "
                                f"or the file (truncated?)")
            self._info[name] = (dtype, shape, self._base + b)

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()
        self._scratch = []

    def scratch(self, slot: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A work tensor reused across tensors (grown when too small): reading a model allocates its block
        buffers once instead of per tensor, which keeps the heap from fragmenting between the kept results."""
        nbytes = dtype.itemsize
        for s in shape:
            nbytes *= s
        if self._scratch[slot].numel() < nbytes:
            self._scratch[slot] = torch.empty(max(nbytes, BLOCK_BYTES), dtype=torch.uint8)
        return self._scratch[slot][:nbytes].view(dtype).view(shape)

    def keys(self) -> list[str]:
        return list(self._info)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info[name][1]

    def _read_into(self, offset: int, out: torch.Tensor, name: str) -> None:
        """Fill the contiguous tensor ``out`` with the bytes at ``offset``."""
        self._f.seek(offset)
        view = out.view(-1).view(torch.uint8).numpy() if out.numel() else None
        if view is not None and self._f.readinto(view) != view.size:
            raise self._bad(f"tensor {name!r} is cut short (truncated file?)")

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The whole tensor in ``dtype`` (default: as stored). Large 2-D tensors are converted row block by row
        block, so a cast never needs a full-size temporary of the stored dtype."""
        stored, shape, offset = self._info[name]
        dtype = dtype or stored
        out = torch.empty(shape, dtype=dtype)
        if dtype == stored:
            self._read_into(offset, out, name)
        elif len(shape) == 2:
            self.map_rows(name, lambda r, rows: out[r:r + rows.size(0)].copy_(rows), dtype=stored)
        else:
            tmp = self.scratch(0, shape, stored)
            self._read_into(offset, tmp, name)
            out.copy_(tmp)
        return out

    def map_rows(self, name: str, fn: Callable[[int, torch.Tensor], Any], dtype: torch.dtype = torch.float32,
                 rows: int | None = None) -> None:
        """Call ``fn(first_row, block)`` for consecutive row blocks (<= ``rows``, in) of a 2-D tensor, each block
        in ``dtype``; the block's buffer is reused, so ``fn`` must copy what it keeps (it may overwrite it)."""
        stored, shape, offset = self._info[name]
        if len(shape) != 2:
            raise ValueError(f"{self.source}: tensor {name!r} is not 2-D ({shape})")
        out_f, in_f = shape
        rows = rows or block_rows(in_f)
        raw = self.scratch(0, (min(rows, out_f), in_f), stored)
        buf = raw if stored == dtype else self.scratch(1, raw.shape, dtype)
        for r in range(0, out_f, rows):
            n = min(rows, out_f - r)
            self._read_into(offset + r * in_f * stored.itemsize, raw[:n], name)
            if buf is not raw:
                buf[:n].copy_(raw[:n])
            fn(r, buf[:n])

    def read_int8(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row symmetric int8 (q (out, in), scale (out,)) of a 2-D tensor, straight from the file: only one
        block of rows (~2 MiB) is ever held in float32. Same values as :func:`llm_core.generation.quantize.quantize_rows`."""
        out_f, in_f = self.shape(name)
        q = torch.empty(out_f, in_f, dtype=torch.int8)
        scale = torch.empty(out_f, dtype=torch.float32)

        work = self.scratch(2, (min(block_rows(in_f), out_f), in_f), torch.float32)

        def block(r: int, w: torch.Tensor) -> None:
            n = w.size(0)
            quantize_rows_into(w, q[r:r + n], scale[r:r + n], work[:n])

        self.map_rows(name, block)
        return q, scale


# ---------------------------------------------------------------------------------------------------------------


def _check_names(model: nn.Module, names: list[str], shapes: Callable[[str], tuple[int, ...]], tied: bool,
                 source: str) -> None:
    """The same checks (and messages) as ``GPT.from_state_dict``: nothing missing, unexpected or mis-shaped."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = set(names)
    if tied:
        expected.pop("lm_head.weight", None)
        have.discard("lm_head.weight")
    missing, unexpected = sorted(set(expected) - have), sorted(have - set(expected))
    if missing:
        raise ValueError(f"{source}: missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        raise ValueError(f"{source}: unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    for k, shape in expected.items():
        if tuple(shapes(k)) != shape:
            raise ValueError(f"{source}: tensor {k!r} has shape {tuple(shapes(k))}, the config expects {shape}")


@torch.no_grad()
def load_checkpoint_quantized(folder: str | Path, mode: str = "int8", progress: Progress | None = None
                              ) -> tuple[nn.Module, Any]:
    """(model in eval mode, tokenizer or None) from one of our checkpoint folders, built directly in ``mode``.

    int8: every linear and the token embedding arrive as int8 read row block by row block from the file (a tied
    lm_head shares the embedding's table); norms and position embeddings as float32. bf16: every tensor in
    bfloat16. fp32: like ``load_checkpoint`` but into private memory instead of a file mapping."""
    from llm_core.model.gpt import GPT
    from llm_core.weights.checkpoint import WEIGHTS_FILE, load_config, read_meta

    m: Mode = parse_mode(mode)
    folder = Path(folder)
    config, meta = load_config(folder), read_meta(folder)
    source = f"checkpoint {folder}: {WEIGHTS_FILE}"
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"checkpoint {folder}: {WEIGHTS_FILE} is missing")
    with torch.device("meta"):
        model = GPT(config)
    tied = bool(config.tie_embeddings)
    float_dtype = torch.bfloat16 if m == "bf16" else torch.float32
    with SafetensorsFile(folder / WEIGHTS_FILE, source) as f:
        _check_names(model, f.keys(), f.shape, tied, source)
        total, done = len(model.state_dict()) - int(tied), 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        if m in ("int8", "int4"):
            linears = [(name, mod) for name, mod in model.named_modules() if type(mod) is nn.Linear]
            for name, lin in linears:
                wkey = "tok_emb.weight" if tied and name == "lm_head" else f"{name}.weight"
                bias = f.read(f"{name}.bias", torch.float32) if lin.bias is not None else None
                parent_name, _, attr = name.rpartition(".")
                four = m == "int4" and wkey != "tok_emb.weight" and Int4Linear.fits(lin.in_features, lin.out_features)
                setattr(model.get_submodule(parent_name), attr,
                        Int4Linear.from_weight(f.read(wkey, torch.float32), bias) if four
                        else Int8Linear(*f.read_int8(wkey), bias))
                tick()
                if bias is not None:
                    tick()
            model.tok_emb = (Int8Embedding.tied_to(model.lm_head) if tied
                             else Int8Embedding(*f.read_int8("tok_emb.weight")))
            if not tied:
                tick()
        for name, p in list(model.named_parameters()):  # what is left on 'meta': norms, position embeddings...
            if p.is_meta:
                parent_name, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent_name), attr,
                        nn.Parameter(f.read(name, float_dtype), requires_grad=False))
                tick()
    if tied and m not in ("int8", "int4"):
        model.lm_head.weight = model.tok_emb.weight
    if model.rope is not None:
        model.rope.reset()
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:  # a module type this loader does not know how to fill
        raise ValueError(f"{source}: could not load {left[:8]} in {m}")
    model.eval().requires_grad_(False)
    from llm_core.weights.checkpoint import load_saved_tokenizer

    return model, load_saved_tokenizer(folder, meta, config)


def _is_default(name_or_path: str | Path) -> bool:
    from llm_core.weights.hub import is_default_name

    return is_default_name(name_or_path)


def checkpoint_folder(name_or_path: str | Path) -> Path | None:
    """The checkpoint folder ``load_model(name_or_path)`` would read, or None (HF folder, .gguf file, or the
    default model before its first conversion)."""
    from llm_core.paths import checkpoints_dir
    from llm_core.weights import hub
    from llm_core.weights.checkpoint import is_checkpoint

    if _is_default(name_or_path):
        return hub.default_cache_folder()
    path = Path(str(name_or_path)).expanduser()
    if not path.exists() and (checkpoints_dir() / str(name_or_path)).is_dir():
        path = checkpoints_dir() / str(name_or_path)
    return path if path.is_dir() and is_checkpoint(path) else None


def load_quantized(name_or_path: str | Path, mode: str = "int8", progress: Progress | None = None
                   ) -> tuple[nn.Module, Any]:
    """``load_model`` + ``quantize_model`` in one step that never holds the float32 model beside the quantized one.

    fp32 is ``load_model`` itself (a file mapping: pages come in as they are used, nothing is copied). int8 and
    bf16 read our checkpoint folders (the default model's cache included) straight into their precision; other
    sources load in float32 first and are converted in place."""
    from llm_core.weights.checkpoint import read_generation_config
    from llm_core.weights.hub import known_generation_config, load_model

    m = parse_mode(mode)
    folder = checkpoint_folder(name_or_path) if m != "fp32" else None
    if folder is not None:
        try:
            model, tok = load_checkpoint_quantized(folder, m, progress)
            # the sampling defaults load_model would attach (the bundled model's are known by name)
            model.generation_config = known_generation_config(name_or_path) or read_generation_config(folder)
            return model, tok
        except (OSError, ValueError) as e:
            if not _is_default(name_or_path):
                raise  # the user's own checkpoint: report it (load_model would raise the same)
            log.warning("model cache %s unreadable (%s); rebuilding it", folder, e)  # load_model rebuilds it
    model, tok = load_model(name_or_path, progress=progress)
    return quantize_model(model, m), tok
