"""Loaders: every supported format, encodings, and each kind of bad input gets a clear error."""

from __future__ import annotations

import re

import pytest

from rag.loaders import LoadError, check_display_name, expand_paths, load_file
from tests.fixtures.rag.docs import make_aes256_pdf, make_docx, make_encrypted_pdf, make_pdf


def write(tmp_path, name, data):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return p


def test_txt_and_md_utf8(tmp_path):
    doc = load_file(write(tmp_path, "a.txt", "Fair is foul,\r\nand foul is fair.\n"))
    assert doc.text == "Fair is foul,\nand foul is fair.\n"
    assert doc.kind == "txt" and doc.warnings == [] and doc.pages[0].page is None
    md = load_file(write(tmp_path, "b.md", "\ufeff# Title\n\nBody ünïcode"))
    assert md.text == "# Title\n\nBody ünïcode" and md.kind == "md"


def test_non_utf8_encodings_are_detected_with_warning(tmp_path):
    text = "Grüße aus Köln, schöne Straße. Café, naïve façade, déjà vu and the crème brûlée were fine."
    doc = load_file(write(tmp_path, "w.txt", text.encode("cp1252")))
    assert doc.text == text
    assert any("not UTF-8" in w and "cp1252" in w for w in doc.warnings)
    ru = "Привет, как дела? Это проверка кодировки для русского текста, который пришёл из старой системы."
    doc = load_file(write(tmp_path, "r.txt", ru.encode("cp1251")))
    assert doc.text == ru and doc.warnings
    doc = load_file(write(tmp_path, "u16.txt", "wide text here".encode("utf-16")))
    assert doc.text == "wide text here"


def test_pdf_keeps_page_numbers(tmp_path):
    doc = load_file(write(tmp_path, "p.pdf", make_pdf(["First page about ravens.", "", "Third page about owls."])))
    assert doc.kind == "pdf"
    assert [p.page for p in doc.pages] == [1, 3]  # the blank page 2 has no text span
    assert doc.text[doc.pages[0].start : doc.pages[0].end] == "First page about ravens."
    assert doc.text[doc.pages[1].start : doc.pages[1].end] == "Third page about owls."


def test_docx_paragraphs_and_tables(tmp_path):
    data = make_docx(["Alpha paragraph.", "", "Beta paragraph."], table=[["name", "role"], ["Puck", "sprite"]])
    doc = load_file(write(tmp_path, "d.docx", data))
    assert "Alpha paragraph.\n\nBeta paragraph." in doc.text
    assert "Puck | sprite" in doc.text


def test_html_drops_scripts_and_styles(tmp_path):
    html = ("<html><head><title>t</title><style>p{color:red}</style></head><body><h1>Heading</h1>"
            "<p>Visible   text.</p><script>var hidden = 1;</script></body></html>")
    doc = load_file(write(tmp_path, "h.html", html))
    assert "Heading" in doc.text and "Visible text." in doc.text
    assert "hidden" not in doc.text and "color" not in doc.text


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("empty.txt", b"", "empty file"),
        ("blank.md", b"   \n\n  ", "no text"),
        ("bin.txt", bytes(range(256)) * 16, "binary content"),
        ("ctrl.txt", b"\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x10\x11" * 50, "binary content"),
        ("corrupt.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage", "the PDF is damaged"),
        ("notpdf.pdf", b"hello, I am not a pdf", "not a PDF file"),
        ("image.pdf", None, "no extractable text"),
        ("broken.docx", b"PK\x03\x04 this is not a zip archive", "not a readable Word .docx"),
        ("data.xlsx", b"whatever", "unsupported extension .xlsx"),
        ("noext", b"plain", "unsupported extension (none)"),
    ],
)
def test_bad_files_get_clear_errors(tmp_path, name, data, message):
    if name == "image.pdf":
        data = make_pdf([""])
    with pytest.raises(LoadError) as e:
        load_file(write(tmp_path, name, data))
    assert message in str(e.value)
    assert name in str(e.value)  # the message names the file
    assert_readable(str(e.value))


def assert_readable(msg: str) -> None:
    """No exception class names (PdfStreamError, BadZipFile, ...) and no server paths in a user-facing message."""
    assert not re.search(r"\b[A-Z][a-z]+(?:[A-Z][a-z]+)*(Error|Exception|File)\b", msg), msg
    assert "/tmp" not in msg and "\\" not in msg, msg


@pytest.mark.parametrize("maker", [make_encrypted_pdf, make_aes256_pdf], ids=["rc4", "aes256"])
def test_password_protected_pdf_is_reported_as_such(tmp_path, maker):
    with pytest.raises(LoadError) as e:
        load_file(write(tmp_path, "locked.pdf", maker(["secret plans"])))
    assert str(e.value).startswith("locked.pdf: the PDF is password-protected")
    assert_readable(str(e.value))


def test_upload_errors_name_the_original_file_not_the_temp_path(tmp_path):
    from rag import Collection
    from tests.fixtures.rag.docs import HashEmbedder

    tmp_upload = write(tmp_path, "gradio/8f3a1c/upload.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage")
    col = Collection.open("up", tmp_path / "rag", embedder=HashEmbedder())
    (fr,) = col.ingest([(tmp_upload, "Quarterly report.pdf")]).files
    assert fr.source == "Quarterly report.pdf" and fr.status == "error"
    assert fr.error.startswith("the PDF is damaged") and "upload" not in fr.error and str(tmp_path) not in fr.error
    assert_readable(fr.error)


def test_size_limit(tmp_path):
    p = write(tmp_path, "big.txt", "word " * 3000)  # 15 kB
    with pytest.raises(LoadError, match="over the .* MB limit"):
        load_file(p, max_bytes=10_000)
    assert load_file(p, max_bytes=20_000).text.startswith("word word")


def test_missing_file(tmp_path):
    with pytest.raises(LoadError, match="file not found"):
        load_file(tmp_path / "nope.txt")


@pytest.mark.parametrize("name", ["../x.txt", "a/b.txt", "..\\evil.txt", "/etc/passwd.txt", "C:evil.txt", "..",
                                  "bad\nname.txt", ""])
def test_display_names_with_path_components_are_rejected(name):
    with pytest.raises(LoadError):
        check_display_name(name)


def test_upload_name_is_checked_but_folder_names_are_not(tmp_path):
    p = write(tmp_path, "upload123.tmp", "some uploaded text")
    with pytest.raises(LoadError, match="path components"):
        load_file(p, name="../../x.txt")
    assert load_file(p, name="notes.txt").source == "notes.txt"  # the display name also decides the format
    write(tmp_path, "docs/sub/a.md", "A")
    write(tmp_path, "docs/b.txt", "B")
    write(tmp_path, "docs/.hidden.txt", "H")
    write(tmp_path, "docs/.git/c.txt", "C")
    items = expand_paths([tmp_path / "docs"])
    assert [i.name for i in items] == ["docs/b.txt", "docs/sub/a.md"]
    assert all(i.trusted_name for i in items)
    assert load_file(items[1].path, items[1].name, check_name=False).source == "docs/sub/a.md"


def test_directory_is_not_a_file(tmp_path):
    d = tmp_path / "folder.txt"
    d.mkdir()
    with pytest.raises(LoadError, match="not a regular file"):
        load_file(d)
