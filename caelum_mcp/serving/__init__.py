"""Serving: the engine and the supervisors put behind MCP and a command line.

The composition root that builds the engine from a config (:mod:`.app`), the tool runtime that
runs supervisors' handlers with typed services (:mod:`.runtime`), the MCP server over stdio and
HTTP (:mod:`.server`), the command line (:mod:`.cli`), client setup (:mod:`.client_setup`), the
dashboard and Prometheus metrics (:mod:`.dashboard`, :mod:`.metrics`) and a clean shutdown
(:mod:`.shutdown`). The top layer: it may import every other one; nothing imports it.
"""
