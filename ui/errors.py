"""Errors as sentences a person can read: no exception class names, no server paths.

Handlers show problems next to the control (``gr.Warning`` or a status line) rather than raising ``gr.Error``,
which in Gradio 6 covers every output with a red "Error" badge and hides the reason. Uploaded files live in
Gradio's temporary folder; a message names them as the user uploaded them (the folder's last part is the
original file name).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path

import gradio as gr

# messages for exceptions whose own text says nothing to a person
_PLAIN = {MemoryError: "the server ran out of memory; try a smaller model, batch or text",
          RecursionError: "the input is nested too deeply to process"}


@lru_cache(maxsize=1)
def _server_dirs_re() -> re.Pattern[str]:
    """Server folders whose paths must not show: the temp folder (Gradio's uploads) and GRADIO_TEMP_DIR."""
    roots = {tempfile.gettempdir(), "/tmp", "/var/tmp"}
    if os.environ.get("GRADIO_TEMP_DIR"):
        roots.add(os.environ["GRADIO_TEMP_DIR"])
    alts = "|".join(re.escape(r.rstrip("/")) for r in sorted(roots, key=len, reverse=True) if r)
    return re.compile(rf"(?:{alts})/[^\s'\"]+")


def hide_server_paths(text: str) -> str:
    """Replace every temp-folder path in ``text`` with its file name (what the user uploaded)."""
    return _server_dirs_re().sub(lambda m: Path(m.group(0)).name, text)


def readable_error(e: BaseException) -> str:
    """``e`` in words: its message without the class name, OS errors as 'file: reason', no temp paths."""
    for cls, text in _PLAIN.items():
        if isinstance(e, cls):
            return text
    if isinstance(e, OSError) and e.strerror:
        name = Path(os.fsdecode(e.filename)).name if e.filename else ""
        text = f"{name}: {e.strerror.lower()}" if name else e.strerror
    elif isinstance(e, KeyError) and e.args:
        text = f"{e.args[0]} is missing"
    else:
        text = str(e).strip() or "something went wrong (no details); see the server log"
    return hide_server_paths(text)


def warn(message: str) -> None:
    """Show ``message`` as a yellow toast next to the page (not a red badge over the outputs)."""
    gr.Warning(message)


def finite_number(value: object, label: str) -> float:
    """``value`` as a finite float, or a ValueError naming the field (an emptied box sends None)."""
    if value is None or value == "":
        raise ValueError(f"{label} is empty: type a number")
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{label} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{label} must be a finite number")
    return x


def whole_number(value: object, label: str) -> int:
    """``value`` as an int (a Number box with precision 0 may still send 3.0 or 1e30); ints stay exact."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    x = finite_number(value, label)
    if x != int(x):
        raise ValueError(f"{label} must be a whole number, got {x:g}")
    return int(x)


def in_range(x: float, label: str, lo: float, hi: float) -> float:
    """``x`` if lo <= x <= hi, else a ValueError saying the range (for the UI's own sane maxima)."""
    if not lo <= x <= hi:
        raise ValueError(f"{label} must be between {_fmt(lo)} and {_fmt(hi)}, got {_fmt(x)}")
    return x


def _fmt(x: float) -> str:
    """1440 -> '1,440', 1e12 -> '1e+12', 0.5 -> '0.5': numbers as a person reads them."""
    return f"{int(x):,}" if x == int(x) and abs(x) < 1e9 else f"{x:g}"


def refuse(message: str) -> str:
    """Warn with ``message`` and return it for the status line beside the button (nothing else changes)."""
    warn(message)
    return f"⚠️ {message}"


def in_words(message: str, labels: dict[str, str]) -> str:
    """A config's validation message with the control's label for its field name (``lr`` -> ``Learning rate``),
    so the rule stays in the config and the message names what the person sees."""
    for name, label in labels.items():
        if message.startswith(name + " "):
            return label + message[len(name):]
    return message
