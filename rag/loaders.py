"""Turn files (txt, md, pdf, docx, html, folders of them) into plain text with page spans.

Every failure is a `LoadError` whose message names the file and the problem, so an ingest can report it per
file and keep going with the others.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_EXTENSIONS = (".txt", ".md", ".markdown", ".pdf", ".docx", ".html", ".htm")
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


class LoadError(ValueError):
    """A file that cannot be ingested; the message is meant for the user."""


@dataclass
class PageSpan:
    """A page's character range [start, end) in `LoadedDocument.text`; page is 1-based, None when unpaged."""

    page: int | None
    start: int
    end: int


@dataclass
class LoadedDocument:
    source: str  # display name shown in citations (file name, or path relative to an ingested folder)
    text: str
    pages: list[PageSpan]
    kind: str  # "txt", "md", "pdf", "docx", "html"
    warnings: list[str] = field(default_factory=list)


def check_display_name(name: str) -> str:
    """Reject names that carry path components (e.g. '../x.txt' from an upload) or control characters."""
    if not name or not name.strip():
        raise LoadError("empty file name")
    if "/" in name or "\\" in name or name in (".", "..") or os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        raise LoadError(f"file name {name!r} contains path components; give a plain file name")
    if _CONTROL.search(name) or "\n" in name or "\r" in name:
        raise LoadError(f"file name {name!r} contains control characters")
    return name


def decode_text(data: bytes, source: str, warnings: list[str]) -> str:
    """The project's one text decoder (llm_core.textfile: BOM, UTF-8, else the detected encoding with a warning),
    its errors as LoadError."""
    from llm_core.textfile import TextFileError
    from llm_core.textfile import decode_text as decode

    try:
        return decode(data, source, warnings)
    except TextFileError as e:
        raise LoadError(str(e)) from e


def _norm_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _single(text: str) -> list[PageSpan]:
    return [PageSpan(None, 0, len(text))]


_LOCKED = "the PDF is password-protected (encrypted); remove the password (e.g. print it to a new PDF) and add it again"


def _open_pdf(data: bytes, source: str):
    """A PdfReader, decrypted when it only has an owner password. Encryption is checked before any text is read:
    a password-protected file gets that message whatever cipher it uses (RC4, or AES-256 which pypdf cannot even
    try without the optional `cryptography` package)."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    declared = re.search(rb"/Encrypt\s*(\d+\s+\d+\s+R|<<)", data) is not None  # the trailer says so
    try:
        reader = PdfReader(io.BytesIO(data))
        encrypted = declared or reader.is_encrypted
    except (DependencyError, NotImplementedError, FileNotDecryptedError) as e:  # pypdf tries the empty password
        raise LoadError(f"{source}: {_LOCKED}") from e
    except Exception as e:  # pypdf raises many types on damaged files
        if declared:
            raise LoadError(f"{source}: {_LOCKED}") from e
        raise LoadError(f"{source}: the PDF is damaged and cannot be read ({_pdf_cause(e)})") from e
    if encrypted:
        try:
            ok = reader.decrypt("")
        except (DependencyError, NotImplementedError, FileNotDecryptedError, PdfReadError) as e:
            raise LoadError(f"{source}: {_LOCKED}") from e
        if not ok:
            raise LoadError(f"{source}: {_LOCKED}")
    return reader


def _pdf_cause(e: Exception) -> str:
    """The reason in words, without the exception's class name or pypdf's internal offsets."""
    msg = str(e).strip().rstrip(".")
    if not msg or len(msg) > 120 or "@" in msg or "0x" in msg:
        return "its internal structure is broken"
    return msg[0].lower() + msg[1:]


def _load_pdf(data: bytes, source: str, warnings: list[str]) -> tuple[str, list[PageSpan]]:
    import logging

    from pypdf.errors import FileNotDecryptedError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    if not data.lstrip()[:5].startswith(b"%PDF"):
        raise LoadError(f"{source}: not a PDF file (it does not start with %PDF); it may be damaged or misnamed")
    reader = _open_pdf(data, source)
    parts: list[str] = []
    pages: list[PageSpan] = []
    pos = 0
    try:
        for i, page in enumerate(reader.pages, start=1):
            t = _norm_newlines(page.extract_text() or "").strip()
            if not t:
                continue
            if parts:
                parts.append("\n\n")
                pos += 2
            parts.append(t)
            pages.append(PageSpan(i, pos, pos + len(t)))
            pos += len(t)
    except FileNotDecryptedError as e:
        raise LoadError(f"{source}: {_LOCKED}") from e
    except Exception as e:  # pypdf raises many types on damaged files
        raise LoadError(f"{source}: the PDF is damaged and cannot be read ({_pdf_cause(e)})") from e
    if not pages:
        raise LoadError(f"{source}: PDF has no extractable text (scanned images are not supported)")
    return "".join(parts), pages


def _load_docx(data: bytes, source: str) -> str:
    try:
        import docx

        d = docx.Document(io.BytesIO(data))
    except Exception as e:
        raise LoadError(f"{source}: not a readable Word .docx file (it may be damaged, or an older .doc file "
                        "renamed to .docx)") from e
    blocks = [p.text for p in d.paragraphs]
    for table in d.tables:
        for row in table.rows:
            blocks.append(" | ".join(c.text.strip() for c in row.cells))
    return "\n\n".join(b.strip() for b in blocks if b.strip())


def _load_html(data: bytes, source: str, warnings: list[str]) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(decode_text(data, source, warnings), "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    text = soup.get_text("\n")
    lines = [re.sub(r"[ \t\xa0]+", " ", ln).strip() for ln in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def load_file(
    path: str | Path, name: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES, check_name: bool = True
) -> LoadedDocument:
    """Load one file. `name` is the display name (e.g. an upload's original name); it is checked for path
    components unless it was made by `expand_paths` from a folder walk (check_name=False)."""
    path = Path(path)
    if name is None:
        source = path.name
    else:
        source = check_display_name(name) if check_name else name
    if not path.exists():
        raise LoadError(f"{source}: file not found")
    if not path.is_file():
        raise LoadError(f"{source}: not a regular file")
    ext = Path(source).suffix.lower() or path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        shown = ext or "(none)"
        raise LoadError(f"{source}: unsupported extension {shown}; supported: {', '.join(SUPPORTED_EXTENSIONS)}")
    size = path.stat().st_size
    if size > max_bytes:
        raise LoadError(f"{source}: file is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.1f} MB limit")
    if size == 0:
        raise LoadError(f"{source}: empty file")
    data = path.read_bytes()
    warnings: list[str] = []
    if ext == ".pdf":
        text, pages = _load_pdf(data, source, warnings)
        kind = "pdf"
    else:
        if ext == ".docx":
            text, kind = _load_docx(data, source), "docx"
        elif ext in (".html", ".htm"):
            text, kind = _load_html(data, source, warnings), "html"
        else:
            text, kind = _norm_newlines(decode_text(data, source, warnings)), "md" if ext != ".txt" else "txt"
        pages = _single(text)
    if not text.strip():
        raise LoadError(f"{source}: no text found (empty document)")
    return LoadedDocument(source=source, text=text, pages=pages, kind=kind, warnings=warnings)


@dataclass
class IngestItem:
    path: Path
    name: str | None = None  # display name; None -> the file's own name
    trusted_name: bool = False  # names we built from a folder walk may contain '/'


def expand_paths(paths: list[str | Path | tuple[str | Path, str]]) -> list[IngestItem]:
    """Expand folders (recursively, sorted, hidden entries skipped) into items.

    A tuple (path, name) carries an explicit display name (an upload's original name, checked later); files in a
    folder are named by their path relative to the folder's parent, e.g. 'notes/week1/a.md'.
    """
    out: list[IngestItem] = []
    for item in paths:
        if isinstance(item, IngestItem):
            out.append(item)
        elif isinstance(item, tuple):
            out.append(IngestItem(Path(item[0]), str(item[1])))
        elif Path(item).is_dir():
            root_dir = Path(os.path.abspath(item))
            base = root_dir.parent
            for root, dirs, files in os.walk(root_dir):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if not f.startswith("."):
                        fp = Path(root) / f
                        out.append(IngestItem(fp, fp.relative_to(base).as_posix(), trusted_name=True))
        else:
            out.append(IngestItem(Path(item)))
    return out
