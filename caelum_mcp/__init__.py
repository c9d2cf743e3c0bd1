"""caelum-mcp: an MCP server that runs LLM work on your own GPUs first, Claude second."""

__version__ = "0.1.0"
