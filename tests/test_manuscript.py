"""A manuscript (.txt, Markdown, EPUB, DOCX) is read into chapters; what cannot be narrated is refused clearly."""

from __future__ import annotations

import pytest

from narrator.manuscript import ManuscriptError, read_manuscript


def test_markdown_headings_make_chapters_and_markup_is_not_spoken(tmp_path):
    path = tmp_path / "my_book.md"
    path.write_text("# The Storm\n\nThe *keeper* climbed the [stairs](http://x).\n\n## The Morning\n\n"
                    "- The sea was **calm**.\n", encoding="utf-8")
    book = read_manuscript(path)
    assert [c.title for c in book.chapters] == ["The Storm", "The Morning"]
    assert book.chapters[0].text == "The keeper climbed the stairs."
    assert book.chapters[1].text == "The sea was calm."


def test_markdown_without_headings_is_one_chapter_titled_from_the_file_name(tmp_path):
    path = tmp_path / "short_story.md"
    path.write_text("Once upon a time.\n\nThe end.", encoding="utf-8")
    book = read_manuscript(path)
    assert [(c.title, c.text) for c in book.chapters] == [("short story", "Once upon a time.\n\nThe end.")]


def test_text_before_the_first_heading_is_a_preface_chapter_only_when_it_has_words(tmp_path):
    path = tmp_path / "b.md"
    path.write_text("A word first.\n\n# One\n\nText.", encoding="utf-8")
    assert [c.title for c in read_manuscript(path).chapters] == ["b", "One"]
    path.write_text("\n\n# One\n\nText.", encoding="utf-8")
    assert [c.title for c in read_manuscript(path).chapters] == ["One"]


def test_a_plain_text_is_one_chapter_with_its_paragraphs(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("First line\ncontinues.\n\nSecond paragraph.\n", encoding="utf-8")
    book = read_manuscript(path)
    assert book.chapters[0].text == "First line continues.\n\nSecond paragraph."


def test_an_epub_gives_its_spine_documents_in_order_titled_by_their_headings(tmp_path):
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("id1")
    book.set_title("The Lighthouse")
    book.set_language("en")
    chapters = []
    for i, (title, text) in enumerate([("Night", "The storm came."), ("Day", "The sea was calm.")]):
        item = epub.EpubHtml(title=title, file_name=f"c{i}.xhtml", lang="en")
        item.content = f"<html><body><h1>{title}</h1><p>{text}</p></body></html>"
        book.add_item(item)
        chapters.append(item)
    book.toc = chapters
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = chapters  # no nav page in the reading order
    path = tmp_path / "lighthouse.epub"
    epub.write_epub(str(path), book)
    read = read_manuscript(path)
    assert read.title == "The Lighthouse"
    assert [(c.title, c.text) for c in read.chapters] == [("Night", "The storm came."), ("Day", "The sea was calm.")]


def test_a_docx_heading_styles_start_chapters(tmp_path):
    import docx

    document = docx.Document()
    document.add_heading("Night", level=1)
    document.add_paragraph("The storm came.")
    document.add_heading("Day", level=2)
    document.add_paragraph("The sea was calm.")
    path = tmp_path / "lighthouse.docx"
    document.save(str(path))
    read = read_manuscript(path)
    assert [(c.title, c.text) for c in read.chapters] == [("Night", "The storm came."), ("Day", "The sea was calm.")]


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "no text to narrate"),
    ("headings.md", b"# One\n\n# Two\n\n...\n", "no text to narrate"),
    ("binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    ("latin1.txt", "caf\u00e9 au lait".encode("latin-1"), "not UTF-8"),
    ("book.pdf", b"%PDF-1.4", "unknown manuscript type"),
    ("broken.epub", b"not a zip", "cannot be opened as an EPUB"),
    ("broken.docx", b"not a zip", "cannot be opened as a DOCX"),
])
def test_what_cannot_be_narrated_is_refused_with_exit_status_2(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ManuscriptError, match=message) as caught:
        read_manuscript(path)
    assert caught.value.exit_code == 2


def test_a_missing_manuscript_is_named(tmp_path):
    with pytest.raises(ManuscriptError, match="not found"):
        read_manuscript(tmp_path / "nowhere.md")
