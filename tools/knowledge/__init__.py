"""The knowledge supervisor's internal tools: plain functions and classes, no models, no MCP.

- :mod:`.sources`: which files of a project are indexed (``.gitignore``, no binaries, no huge
  files, no ``.env`` or key files) and their text with secrets redacted;
- :mod:`.chunking`: passages that follow structure (Python functions and classes, top-level code
  blocks, Markdown and reStructuredText sections, paragraphs), each with path, line span, symbol;
- :mod:`.terms`: code-aware terms for FTS5 (identifiers whole and split);
- :mod:`.store`: the per-project index (SQLite WAL: files, chunks, FTS5, vectors by chunk hash);
- :mod:`.indexer`: incremental indexing by content hash, embeddings batched and cached;
- :mod:`.vectors` and :mod:`.ranking`: exact cosine search with numpy, and the fusion of lexical
  and semantic scores (normalised convex combination, or reciprocal rank fusion);
- :mod:`.snippets`: passages trimmed around the lines that match;
- :mod:`.memory`: notes kept per project or globally, searched the same hybrid way.
"""
