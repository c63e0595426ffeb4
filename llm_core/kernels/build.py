"""Builds ``gemv.cpp`` once per machine (into ``cache_dir()/kernels/``) and loads it; None where it cannot.

The compile (~20-80 s on 2 cores) starts, in a background thread, on the first decode that wants a kernel (or at
app start); that decode and the ones after it use PyTorch's kernels until it is done. Later processes load the
built library directly. A missing compiler, a non-x86 / pre-AVX2 CPU or a failed build is logged once and the
callers keep PyTorch's kernels. ``STUDIO_KERNELS=0`` turns the kernels off (read on every call, for A/B runs).

Where the CPU has AVX512 F/BW/VL/DQ and VNNI, the build adds those flags and the dots run 16 lanes wide
(``gemv_avx512.h``); ``STUDIO_KERNELS_AVX512=0`` builds the AVX2 version instead (read once per process, for A/B
runs and to test that version on such a CPU). The build folder's name covers the flags, so each has its own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

from llm_core.paths import cache_dir

__all__ = ["cpu_kernels", "enabled", "identity", "unavailable_reason", "prepare_in_background"]

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("gemv.cpp")
HEADERS = [Path(__file__).with_name("gemv_avx512.h")]  # included by SOURCE: part of the build's identity
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp"]
AVX512_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni"]
AVX512_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni")  # their names in /proc/cpuinfo
_lock = threading.Lock()
_bg_lock = threading.Lock()
_state: dict[str, object] = {}  # "module" (ModuleType | None), "reason" (str), "builder" (Thread), caches


_ENV_BYTES = getattr(os.environ, "_data", None) if os.name == "posix" else None  # the environment's own dict


def enabled() -> bool:
    """False when ``$STUDIO_KERNELS`` is ``0`` (or off/false/no). Read on every call, so a changed environment
    counts at once: ~330 calls a decoded token, so on POSIX it reads the environment's bytes dict directly
    (20 ns, against 0.7 us through ``os.environ.get``'s key encoding)."""
    if _ENV_BYTES is not None:
        raw_b = _ENV_BYTES.get(b"STUDIO_KERNELS")
        raw = None if raw_b is None else raw_b.decode(errors="replace")
    else:
        raw = os.environ.get("STUDIO_KERNELS")
    return raw is None or raw.strip().lower() not in ("0", "off", "false", "no")


def identity() -> str:
    """What decodes on this machine, for caches of speed measurements (``precision_choice``): "off" or the build
    folder's name (a hash of source, flags, torch, python). Cheap: compiles nothing."""
    return _build_dir().name if enabled() and _cpu_reason() is None else "off"


def unavailable_reason() -> str | None:
    """Why :func:`cpu_kernels` is None (after it has been called), else None."""
    return _state.get("reason")  # type: ignore[return-value]


def cpu_kernels(wait: bool = False) -> ModuleType | None:
    """The compiled kernels module (``int8_linear``, ``int4_linear``, ``float_linear``, ...), or None when disabled,
    unavailable, or still being compiled.

    Loaded at most once per process (thread-safe); the outcome is remembered. A build an earlier process finished is
    imported at once (~10 ms). Otherwise the compiler runs in a background thread (20-80 s on 2 cores) and, unless
    ``wait``, the caller gets None meanwhile: a decode uses PyTorch's kernels until ours are ready instead of
    stalling its first reply (an API request would time out). ``wait=True`` blocks until the outcome is known
    (tests, benchmarks, the app's background preload)."""
    if not enabled():
        return None
    if "module" in _state:
        return _state["module"]  # type: ignore[return-value]
    if not wait:
        if "builder" in _state:  # compiling in the background: no file check and no lock on every matmul
            return None
        if _cpu_reason() is None and not (_build_dir() / "ok").is_file():
            _build_in_background()
            return None
    return _load_once()


def prepare_in_background() -> threading.Thread:
    """Build or load the kernels in a daemon thread (e.g. at app start), so that decoding finds them ready."""
    t = threading.Thread(target=_load_once, name="llm-kernels-build", daemon=True)
    t.start()
    return t


def _load_once() -> ModuleType | None:
    """The outcome of :func:`_load`, computed by the first caller (the others wait for it)."""
    with _lock:
        if "module" not in _state:
            _state["module"] = _load()
    return _state["module"]  # type: ignore[return-value]


def _build_in_background() -> None:
    """Start :func:`prepare_in_background` once per process."""
    with _bg_lock:
        if "builder" not in _state:
            _state["builder"] = prepare_in_background()


def _cpu_reason() -> str | None:
    if "cpu_reason" not in _state:
        _state["cpu_reason"] = _check_cpu()
    return _state["cpu_reason"]  # type: ignore[return-value]


def _check_cpu() -> str | None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86-64 CPU ({platform.machine()})"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"CPU without AVX2 (PyTorch reports {torch.backends.cpu.get_cpu_capability()})"
    return None


def build_flags() -> list[str]:
    """The compiler flags for this CPU: AVX2 + FMA, and AVX512 (with VNNI) where the CPU has every part of it and
    ``STUDIO_KERNELS_AVX512`` is not ``0``. Linux's /proc/cpuinfo says which; elsewhere AVX2 only."""
    if "flags" not in _state:
        off = os.environ.get("STUDIO_KERNELS_AVX512", "").strip().lower() in ("0", "off", "false", "no")
        _state["flags"] = FLAGS + (AVX512_FLAGS if not off and _cpu_has(AVX512_CPU_FLAGS) else [])
    return _state["flags"]  # type: ignore[return-value]


def _cpu_has(names: tuple[str, ...]) -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return set(names) <= set(flags)


def _build_dir() -> Path:
    """One folder per (sources, flags, torch, python): a new torch or an edited source builds afresh. (The hash is
    kept: decoding asks for the folder on every matmul while a background build runs.)"""
    if "key" not in _state:
        code = b"".join(p.read_bytes() for p in (SOURCE, *HEADERS))
        _state["key"] = hashlib.sha256(code + " ".join(build_flags()).encode() + torch.__version__.encode()
                                       + sys.version.encode()).hexdigest()[:16]
    return cache_dir() / "kernels" / f"gemv-{_state['key']}"


def _load() -> ModuleType | None:
    reason = _cpu_reason()
    mod = None
    if reason is None:
        try:
            mod = _import_built(_build_dir()) or _compile(_build_dir())
            if not mod.supported():
                reason, mod = "CPU without the instructions of the build", None
        except Exception as e:  # noqa: BLE001 - any build failure means: keep PyTorch's kernels
            reason = f"build failed: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    if reason:
        _state["reason"] = reason
        log.warning("llm_core.kernels: using PyTorch's kernels (%s)", reason)
    return mod


def _import_built(folder: Path) -> ModuleType | None:
    """The library a finished earlier build left (marked by ``ok``), without running the compiler."""
    so = folder / "llm_gemv.so"
    if not (folder / "ok").is_file() or not so.is_file():
        return None
    spec = importlib.util.spec_from_file_location("llm_gemv", so)
    if spec is None or spec.loader is None:
        return None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _compile(folder: Path) -> ModuleType:
    from torch.utils.cpp_extension import load

    _ninja_on_path()
    folder.mkdir(parents=True, exist_ok=True)
    log.warning("llm_core.kernels: compiling the CPU decode kernels once into %s ...", folder)
    t = time.perf_counter()
    mod = load(name="llm_gemv", sources=[str(SOURCE)], extra_cflags=build_flags(), extra_ldflags=["-fopenmp"],
               build_directory=str(folder), verbose=False)
    seconds = round(time.perf_counter() - t, 1)
    tmp = folder / "ok.tmp"
    tmp.write_text(f"{seconds}\n")
    os.replace(tmp, folder / "ok")
    log.warning("llm_core.kernels: compiled in %.1f s", seconds)
    return mod


def _ninja_on_path() -> None:
    """cpp_extension runs ``ninja`` from PATH; the pip package's binary is not there unless the venv is active."""
    try:
        import ninja  # type: ignore[import-not-found]
    except ImportError:
        return
    bin_dir = str(getattr(ninja, "BIN_DIR", ""))
    if bin_dir and bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
