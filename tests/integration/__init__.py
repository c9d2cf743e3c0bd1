"""The MCP server end to end: in-process client, stdio subprocess, streamable HTTP and SSE."""
