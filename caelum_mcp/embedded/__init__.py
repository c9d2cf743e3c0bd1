"""The embedded models: the llama.cpp child that serves SmolLM2 and the embedding model when no
host is configured (:mod:`.server`, run as ``python -m caelum_mcp.embedded``), and the embedding
model's GGUF, converted and verified (:mod:`.embedding_model`). It imports only the kernel: the child
process loads nothing of the engine.
"""
