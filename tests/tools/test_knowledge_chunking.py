"""Chunking follows structure: Python by function and class, other code by top-level block,
Markdown and reStructuredText by heading, plain text by paragraph; every chunk within the caps."""

from __future__ import annotations

from textwrap import dedent

from caelum_mcp.tools.knowledge.chunking import MAX_CHARS, MAX_LINE_PIECES, MAX_LINES, chunk_file
from caelum_mcp.tools.knowledge.terms import expand_word, fts_query, index_text, query_terms

PYTHON = dedent(
    '''
    """Module docstring."""
    import os

    TIMEOUT = 3


    # Refresh the token before it expires.
    def refresh_token(session):
        return session.renew()


    class RetryPolicy:
        """How often to retry."""

        attempts = 3

    '''
).lstrip()


def spans(chunks: list) -> list[tuple[int, int, str, str]]:
    return [(c.start_line, c.end_line, c.kind, c.symbol) for c in chunks]


def test_python_chunks_by_function_and_class_with_the_comment_above() -> None:
    chunks = chunk_file("app/auth.py", PYTHON)
    assert spans(chunks) == [
        (1, 4, "module", ""),
        (7, 9, "function", "refresh_token"),
        (12, 15, "class", "RetryPolicy"),
    ]
    assert chunks[1].text.startswith("# Refresh the token")
    assert all(c.path == "app/auth.py" for c in chunks)


def test_a_long_python_class_is_cut_into_its_methods() -> None:
    methods = "\n".join(f"    def step_{i}(self):\n" + "        x = 1\n" * 12 + "        return x\n" for i in range(8))
    text = f"class Pipeline:\n    name = 'p'\n\n{methods}"
    chunks = chunk_file("pipe.py", text)
    assert [c.symbol for c in chunks] == [f"Pipeline.step_{i}" for i in range(8)]
    assert chunks[0].start_line == 1  # the short class header goes with the first method
    assert chunks[1].start_line == text.splitlines().index("    def step_1(self):") + 1
    assert all(c.kind == "method" for c in chunks)


def test_python_that_does_not_parse_is_chunked_as_code() -> None:
    chunks = chunk_file("broken.py", "def f(:\n    pass\n")
    assert [c.kind for c in chunks] == ["block"]


def test_markdown_chunks_by_heading_path_outside_code_fences() -> None:
    text = dedent(
        """
        Intro line.

        # Install

        Use pip.

        ## From source

        ```sh
        # not a heading
        make install
        ```

        # Usage

        Run it.
        """
    ).lstrip()
    chunks = chunk_file("README.md", text)
    assert [(c.symbol, c.start_line) for c in chunks] == [
        ("", 1),
        ("Install", 3),
        ("Install > From source", 7),
        ("Usage", 14),
    ]
    assert "make install" in chunks[2].text


def test_restructuredtext_chunks_by_title() -> None:
    text = "=====\nGuide\n=====\n\nIntro.\n\nSetup\n-----\n\nSteps.\n\nDetails\n~~~~~~~\n\nMore.\n"
    chunks = chunk_file("docs/guide.rst", text)
    assert [(c.symbol, c.start_line) for c in chunks] == [
        ("Guide", 1),
        ("Guide > Setup", 7),
        ("Guide > Setup > Details", 12),
    ]


def test_other_code_by_top_level_blocks_named_by_what_they_declare() -> None:
    body = "".join(f"  const v{i} = {i};\n" for i in range(14))
    text = f"function alpha() {{\n{body}}}\n\nexport class Beta {{\n{body}}}\n"
    chunks = chunk_file("web/app.js", text)
    assert [(c.symbol, c.start_line, c.end_line) for c in chunks] == [("alpha", 1, 16), ("Beta", 18, 33)]


def test_plain_text_by_paragraph_and_every_chunk_within_the_caps() -> None:
    paragraph = "word " * 30 + "\n"
    text = "\n".join(paragraph * 3 for _ in range(40))
    chunks = chunk_file("notes.txt", text)
    assert len(chunks) > 1 and all(c.kind == "paragraph" for c in chunks)
    for c in chunks:
        assert c.end_line - c.start_line + 1 <= MAX_LINES and len(c.text) <= MAX_CHARS
    huge = chunk_file("data.py", "x = [" + "1, " * 5000 + "]\n")
    assert all(len(c.text) <= MAX_CHARS for c in huge)


def test_a_paragraph_on_one_long_line_is_searched_to_its_end() -> None:
    """Prose written one paragraph per line (Markdown allows it): past MAX_CHARS the line used to be
    cut, and its last words were in no passage. Code keeps only the start of such a line."""
    words = [f"w{n:04d}" for n in range(2000)]  # 12,000 characters
    line = " ".join(words)
    for path, text in (("notes.txt", f"Title\n\n{line}\n"), ("guide.md", f"# Guide\n\n{line}\n")):
        chunks = chunk_file(path, text)
        pieces = [c for c in chunks if c.start_line == 3]
        assert len(pieces) == 4 and all(c.end_line == 3 and len(c.text) <= MAX_CHARS for c in pieces)
        assert " ".join(c.text for c in pieces).split() == words  # every word once, none cut in two
    minified = chunk_file("app.js", "var a=" + "1," * 5000 + "2;\n")
    assert len(minified) == 1 and len(minified[0].text) == MAX_CHARS
    endless = chunk_file("log.txt", "x " * 100_000)
    assert len(endless) == MAX_LINE_PIECES  # bounded: a pathological line does not flood the index


def test_empty_files_have_no_chunks() -> None:
    assert chunk_file("empty.py", "\n\n") == []


def test_identifiers_are_indexed_whole_and_split() -> None:
    assert expand_word("getUserName") == ["getusername", "get", "user", "name"]
    assert expand_word("MAX_RETRY_COUNT") == ["max_retry_count", "max", "retry", "count"]
    assert expand_word("HTTPServerError") == ["httpservererror", "http", "server", "error"]
    assert expand_word("token") == ["token"]
    assert index_text("def refresh_token():") == "def refresh_token refresh token"


def test_query_terms_drop_stopwords_and_quote_fts_operators() -> None:
    assert query_terms("where do we refresh OAuth tokens?") == ["refresh", "oauth", "tokens"]
    assert query_terms("the") == ["the"]  # nothing else: keep it
    assert fts_query(["near", 'a"b']) == '"near" OR "a""b"'
