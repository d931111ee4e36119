"""Manuscripts: a book's text, read into chapters for narration (`narrator narrate`, components/narrate.py).

    book = read_manuscript("novel.md")       # .txt, .md / .markdown, .epub, .docx
    book.title, [(c.title, c.text) for c in book.chapters]

Chapters:
    .txt        one chapter, titled from the file name (a plain text has no headings)
    .md         each heading (`#`, `##`, ...) starts a chapter titled with it; text before the first heading is a
                chapter of its own only when it holds words (a preface); a file without headings is one chapter
                titled from the file name. Markdown markup (emphasis, links, code, images, lists) is stripped.
    .epub       the documents of the spine in reading order (ebooklib), each a chapter titled with its first
                heading, else its table-of-contents entry, else "Chapter N"; documents without text are skipped
    .docx       paragraphs styled "Heading N" or "Title" start chapters (python-docx); as for Markdown otherwise

Errors are `ManuscriptError` (exit 2) with what to do: a missing, empty, binary or undecodable file, an unknown
extension, an EPUB or DOCX that cannot be opened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from narrator.errors import NarratorError

EXTENSIONS = (".txt", ".md", ".markdown", ".epub", ".docx")
BINARY_SNIFF_BYTES = 8192  # the head of a text file looked at for NUL bytes (a binary file)


class ManuscriptError(NarratorError):
    """A manuscript cannot be read into chapters; the message says what to do."""

    exit_code = 2


@dataclass(frozen=True)
class Chapter:
    title: str
    text: str


@dataclass(frozen=True)
class Manuscript:
    title: str
    chapters: list[Chapter] = field(default_factory=list)


def read_manuscript(path: str | Path) -> Manuscript:
    """The manuscript at `path` split into chapters (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ManuscriptError(f"manuscript {path} not found (or not a file): give a .txt, .md, .epub or .docx file")
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise ManuscriptError(f"{path}: unknown manuscript type {suffix or '(no extension)'}; give one of "
                              f"{', '.join(EXTENSIONS)}")
    title = _title_from_name(path)
    if suffix == ".txt":
        chapters = [Chapter(title, _clean_text(_read_text(path)))]
    elif suffix in (".md", ".markdown"):
        chapters = _markdown_chapters(_read_text(path), title)
    elif suffix == ".epub":
        title, chapters = _epub_chapters(path, title)
    else:
        title, chapters = _docx_chapters(path, title)
    chapters = [c for c in chapters if _has_words(c.text)]
    if not chapters:
        raise ManuscriptError(f"{path} has no text to narrate: it is empty or holds only headings, markup or "
                              "punctuation; give a manuscript with words")
    return Manuscript(title=title, chapters=chapters)


def _title_from_name(path: Path) -> str:
    return re.sub(r"[_\-]+", " ", path.stem).strip() or "Untitled"


def _has_words(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        raise ManuscriptError(f"{path} is a binary file, not text: give a UTF-8 text, Markdown, EPUB or DOCX "
                              "manuscript")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ManuscriptError(f"{path} is not UTF-8 text (byte {error.start} cannot be decoded): save it as UTF-8 "
                              "and try again") from None


def _clean_text(text: str) -> str:
    """Paragraphs joined by blank lines, lines of one paragraph joined by spaces."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n"))]
    return "\n\n".join(p for p in paragraphs if p)


_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_MARKUP = [
    (re.compile(r"```.*?```", re.DOTALL), " "),  # fenced code
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # images: their alt text
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),  # links: their text
    (re.compile(r"<[^>]+>"), " "),  # inline HTML
    (re.compile(r"`([^`]*)`"), r"\1"),
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),
    (re.compile(r"(\*|_)(.+?)\1"), r"\2"),
    (re.compile(r"^\s{0,3}>\s?", re.MULTILINE), ""),  # block quotes
    (re.compile(r"^\s*([-*+]|\d+[.)])\s+", re.MULTILINE), ""),  # list markers
    (re.compile(r"^\s*([-*_]\s*){3,}$", re.MULTILINE), ""),  # rules
]


def strip_markdown(text: str) -> str:
    for pattern, replacement in _MARKUP:
        text = pattern.sub(replacement, text)
    return _clean_text(text)


def _markdown_chapters(text: str, fallback_title: str) -> list[Chapter]:
    lines = text.replace("\r\n", "\n").split("\n")
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in lines:
        heading = _HEADING.match(line)
        if heading:
            sections.append((strip_markdown(heading.group(2)) or fallback_title, []))
        elif _SETEXT.match(line) and sections[-1][1] and sections[-1][1][-1].strip():
            title = sections[-1][1].pop()
            sections.append((strip_markdown(title) or fallback_title, []))
        else:
            sections[-1][1].append(line)
    if len(sections) == 1:
        return [Chapter(fallback_title, strip_markdown(text))]
    _preface_title, preface = sections[0]
    chapters = [Chapter(title or fallback_title, strip_markdown("\n".join(body))) for title, body in sections[1:]]
    if _has_words("\n".join(preface)):
        chapters.insert(0, Chapter(fallback_title, strip_markdown("\n".join(preface))))
    return chapters


def _epub_chapters(path: Path, fallback_title: str) -> tuple[str, list[Chapter]]:
    import ebooklib
    from ebooklib import epub

    try:
        book = epub.read_epub(str(path), {"ignore_ncx": True})
    except Exception as error:  # noqa: BLE001 - ebooklib raises zip, XML and its own errors alike
        raise ManuscriptError(f"{path} cannot be opened as an EPUB ({type(error).__name__}: {error}); check the "
                              "file or export the book again") from None
    titles = book.get_metadata("DC", "title")
    book_title = (titles[0][0].strip() if titles and titles[0][0] else "") or fallback_title
    toc_titles = {}
    for entry in _flatten_toc(book.toc):
        href = getattr(entry, "href", "") or ""
        toc_titles.setdefault(href.split("#")[0], getattr(entry, "title", "") or "")
    chapters = []
    for item_id, _linear in book.spine:
        item = book.get_item_with_id(item_id)
        if item is None or item.get_type() != ebooklib.ITEM_DOCUMENT:
            continue
        heading, text = _html_text(item.get_content())
        if not _has_words(text):
            continue
        title = heading or toc_titles.get(item.get_name(), "") or f"Chapter {len(chapters) + 1}"
        chapters.append(Chapter(title, text))
    return book_title, chapters


def _flatten_toc(entries) -> list:
    flat = []
    for entry in entries or []:
        if isinstance(entry, (tuple, list)):
            flat.extend(_flatten_toc([entry[0]]))
            flat.extend(_flatten_toc(entry[1] if len(entry) > 1 else []))
        else:
            flat.append(entry)
    return flat


def _html_text(content: bytes) -> tuple[str, str]:
    """(first heading, text without it) of an XHTML document."""
    from html.parser import HTMLParser

    class Reader(HTMLParser):
        BLOCKS: ClassVar[set[str]] = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "section", "blockquote", "tr"}
        SKIP: ClassVar[set[str]] = {"script", "style", "head", "title"}

        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []
            self.heading: str | None = None
            self._in_heading = False
            self._heading_parts: list[str] = []
            self._skip = 0

        def handle_starttag(self, tag, attrs):
            if tag in self.SKIP:
                self._skip += 1
            elif tag in self.BLOCKS:
                self.parts.append("\n\n")
            if re.fullmatch(r"h[1-6]", tag) and self.heading is None:
                self._in_heading = True

        def handle_endtag(self, tag):
            if tag in self.SKIP:
                self._skip = max(0, self._skip - 1)
            elif re.fullmatch(r"h[1-6]", tag) and self._in_heading:
                self._in_heading = False
                self.heading = " ".join("".join(self._heading_parts).split())
            elif tag in self.BLOCKS:
                self.parts.append("\n\n")

        def handle_data(self, data):
            if self._skip:
                return
            (self._heading_parts if self._in_heading else self.parts).append(data)

    reader = Reader()
    reader.feed(content.decode("utf-8", errors="replace"))
    return reader.heading or "", _clean_text("".join(reader.parts))


def _docx_chapters(path: Path, fallback_title: str) -> tuple[str, list[Chapter]]:
    import docx

    try:
        document = docx.Document(str(path))
    except Exception as error:  # noqa: BLE001 - python-docx raises zip, XML and package errors alike
        raise ManuscriptError(f"{path} cannot be opened as a DOCX ({type(error).__name__}: {error}); check the file "
                              "or save it again from the word processor") from None
    book_title = (document.core_properties.title or "").strip() or fallback_title
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    for paragraph in document.paragraphs:
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        text = paragraph.text.strip()
        if (style.startswith("Heading") or style == "Title") and text:
            sections.append((text, []))
        elif text:
            sections[-1][1].append(text)
    if len(sections) == 1:
        return book_title, [Chapter(book_title, "\n\n".join(sections[0][1]))]
    chapters = [Chapter(title or book_title, "\n\n".join(body)) for title, body in sections[1:]]
    if sections[0][1]:
        chapters.insert(0, Chapter(book_title, "\n\n".join(sections[0][1])))
    return book_title, chapters
