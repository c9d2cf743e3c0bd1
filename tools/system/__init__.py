"""System health: the infrastructure supervisor's internal tools for ``check_system_health``.

- :mod:`.checks`: the verdict model (OK / WARN / CRIT / n/a with reasons) and the thresholds;
- :mod:`.host`: CPU, load, memory, swap, disks, network and temperatures (psutil);
- :mod:`.gpu`: NVIDIA GPUs through NVML (``nvidia-ml-py``), else ``nvidia-smi``; none gives n/a;
- :mod:`.probes`: the configured ``http``, ``tcp`` and ``command`` probes, run in parallel;
- :mod:`.snapshots`: earlier readings in SQLite, for trends ("disk / 71 % → 83 % since yesterday").

Plain functions and pydantic models: no model, no MCP.
"""
