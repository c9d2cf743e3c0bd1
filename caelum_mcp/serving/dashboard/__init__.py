"""The live web dashboard and the Prometheus metrics of a running server.

- :mod:`.telemetry`: what the running server observes (ledger rows, tool-call outcomes, execution
  records) and the change signal behind the live updates;
- :mod:`.history`: read-only queries over the cost ledger;
- :mod:`.snapshot`: the JSON the page renders;
- :mod:`.routes`: the page, its JSON, the SSE stream, the host switch, the sign-in form, ``/metrics``;
- :mod:`.auth`: the one gate in front of the HTTP app (bearer token, session cookie, CSRF, DNS rebinding);
- :mod:`.serve`: the dashboard beside the stdio transport, and metrics on a port of their own;
- ``static/``: the page's HTML, JS and CSS, shipped as package data (no CDN, no build step).

Nothing is imported here, so that :mod:`caelum_mcp.serving.server` can use the parts that :mod:`.serve`
builds upon without an import cycle.
"""
