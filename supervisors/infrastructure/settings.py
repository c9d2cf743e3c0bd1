"""The ``[infrastructure]`` config section: probes, thresholds and log-reading limits.

```toml
[infrastructure.thresholds]          # [warn, crit] pairs
disk_pct = [80, 95]

[[infrastructure.probes]]
name = "api"
kind = "http"                        # http | tcp | command
url = "http://127.0.0.1:8080/health"
body_contains = "ok"

[[infrastructure.probes]]
name = "postgres"
kind = "tcp"
host = "127.0.0.1"
port = 5432

[[infrastructure.probes]]
name = "backup-fresh"
kind = "command"
argv = ["test", "-n", "x"]           # an argument list, never a shell
on_failure = "WARN"
pass_env = ["PGHOST"]                # besides PATH, HOME, TZ, TMPDIR, CI, the locale; never API keys
```

The config comes only from the user (``--config``, ``$CAELUM_CONFIG`` or their own config folder,
never a project's ``caelum.toml``), and a command probe still runs with a clean environment.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from caelum_mcp.tools.system.checks import Thresholds
from caelum_mcp.tools.system.probes import Probe

MAX_PROBES = 64


class LogSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_entries: int = Field(default=2_000_000, ge=1_000, le=50_000_000, description="entries read per call at most")
    max_files: int = Field(default=200, ge=1, le=10_000, description="files read per call at most")
    time_budget_s: float = Field(default=60.0, gt=0, le=3600, description="reading stops after this long")
    model_pass: bool = Field(default=True, description="let a local model split or merge mined clusters")
    model_pass_clusters: int = Field(
        default=24, ge=0, le=500, description="new clusters sent to the model per call at most"
    )


class InfrastructureSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    probes: tuple[Probe, ...] = Field(default=(), description="services to probe on every health check")
    thresholds: Thresholds = Thresholds()
    logs: LogSettings = LogSettings()
    host_sample_s: float = Field(default=0.25, gt=0, le=5, description="how long CPU and network are sampled")
    gpu_timeout_s: float = Field(default=3.0, gt=0, le=60, description="NVML / nvidia-smi time limit")

    @field_validator("probes")
    @classmethod
    def _unique(cls, probes: tuple[Probe, ...]) -> tuple[Probe, ...]:
        if len(probes) > MAX_PROBES:
            raise ValueError(f"at most {MAX_PROBES} probes; remove {len(probes) - MAX_PROBES}")
        names = [p.name for p in probes]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"probe names must be unique; repeated: {', '.join(repeated)}")
        return probes
