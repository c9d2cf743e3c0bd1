"""Log files read, parsed, mined into signatures and analysed: the infrastructure supervisor's
internal tools for ``diagnose_logs``.

- :mod:`.reading`: plain, ``.gz`` and rotated files, streamed, with line numbers;
- :mod:`.timestamps`: the ways logs write times, parsed;
- :mod:`.header`: a file's line header (time, level, pid, host, thread, component) inferred from
  its first lines, whatever the separators and timestamp forms;
- :mod:`.formats`: the line format of a file detected from a sample (the inferred header; JSON
  lines, journald exports, access logs, RFC 5424 and nginx errors, which say more than a header),
  and each entry's time, level, source and message;
- :mod:`.masking`: ids, addresses, numbers, hex, paths, durations and sizes replaced by ``<*>``;
- :mod:`.mining`: messages grouped into templates (signatures);
- :mod:`.refine`: the clusters worth a model's look, and its split/merge decisions applied;
- :mod:`.analysis`: signatures ranked by level, rarity and burstiness, a timeline, bursts that
  happen together;
- :mod:`.diagnosis`: the steps put together (``collect_logs``, ``mine``, ``analyse``) and the
  result models.

Plain functions and pydantic models: no model, no MCP.
"""
