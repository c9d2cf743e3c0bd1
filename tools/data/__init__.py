"""Internal tools over a user's data files, with DuckDB in-process and read-only in layers.

- :mod:`.sources`: what a user names (files, folders, globs inside the allowed roots) as the files
  to register, each with its kind (CSV/TSV, Parquet, JSON/NDJSON, ``.xlsx``, SQLite, DuckDB);
- :mod:`.session`: the guarded DuckDB session those files become tables of, and how one query runs
  in it (time limit, row and character caps);
- :mod:`.sql_guard`: the statement check every query passes first (one SELECT, known tables only);
- :mod:`.copies`: SQLite and Excel files copied into the session through the standard library and
  openpyxl (no DuckDB extension to download);
- :mod:`.schema_text`: the tables described for a model (schema linking), within a token budget;
- :mod:`.sql_checks`: whether a query's result fits the question (grounding);
- :mod:`.profile`: a table's profile, computed by DuckDB;
- :mod:`.charts`: a Vega-Lite spec from a result, rendered to PNG locally.

Nothing here knows about models, supervisors or MCP; every function is tested on real files.
"""
