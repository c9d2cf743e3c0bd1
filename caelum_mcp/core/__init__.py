"""The kernel: what every other layer speaks in, and nothing else.

Types and the error tree (:mod:`.types`, :mod:`.errors`), an LLM task and what it needs
(:mod:`.llm`), the raw confidence of an answer (:mod:`.confidence`), model prices (:mod:`.pricing`),
the one secrets redactor (:mod:`.redaction`), log output (:mod:`.logs`), JSON-schema checks
(:mod:`.schemas`) and small shared helpers (:mod:`.damaged`, :mod:`.lazy_imports`). It imports no
other layer of caelum_mcp (``tests/test_layers.py``): supervisors, tools and the engine all build on
it, so it must stay plain.
"""
