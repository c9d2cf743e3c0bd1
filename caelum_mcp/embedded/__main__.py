"""``python -m caelum_mcp.embedded``: the embedded llama.cpp server (:mod:`caelum_mcp.embedded.server`)."""

from caelum_mcp.embedded.server import main

main()
