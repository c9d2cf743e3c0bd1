"""The calibration table: entries per (model, kind) in JSON, looked up with conservative fallbacks.

See the package docstring (:mod:`caelum_mcp.engine.calibration`) for the file and the lookup order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, ValidationError, model_validator

from caelum_mcp.core.lazy_imports import lazy_module
from caelum_mcp.core.types import Frozen

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_module("numpy")  # fitting and isotonic lookups only; the server starts without it

from caelum_mcp.engine.calibration.fitting import (
    CalibrationError,
    Calibrator,
)

log = logging.getLogger(__name__)

# The shipped table; the user's own <data dir>/calibration.json overrides it entry by entry.
DEFAULT_PATH = Path(__file__).resolve().parent / "calibration_default.json"
USER_FILE = "calibration.json"
FILE_VERSION = 1
ANY = "*"  # an entry pooled over every model (or every kind)


class CalibrationEntry(Frozen):
    """The calibration of one (model, kind), ``"*"`` for pooled; with what it measured.

    ``base`` maps an answer's own signals; ``with_agreement`` (optional) maps them plus sample
    agreement, which the router samples only while the base probability lies in ``band`` (where
    the answer is neither clearly right nor clearly wrong and agreement measurably helps).
    ``n``, ``accuracy``, ``clear_accuracy`` (accuracy of what cleared ``threshold``), ``ece`` and
    ``auroc`` are the held-out measurements; ``source`` says what it was fitted from.
    """

    model: str = Field(min_length=1)
    kind: str = Field(min_length=1)
    base: Calibrator
    with_agreement: Calibrator | None = None
    band: tuple[float, float] | None = None
    n: int = Field(default=0, ge=0)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    clear_accuracy: float | None = Field(default=None, ge=0, le=1)
    ece: float | None = Field(default=None, ge=0, le=1)
    auroc: float | None = Field(default=None, ge=0, le=1)
    threshold: float = Field(default=0.75, ge=0, le=1)
    fitted_at: str = ""
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> CalibrationEntry:
        if self.base.uses_agreement:
            raise ValueError("base must not use agreement (it decides whether to sample)")
        if self.with_agreement is not None and not self.with_agreement.uses_agreement:
            raise ValueError("with_agreement must be a logistic calibrator over the agreement features")
        if self.band is not None and not 0.0 <= self.band[0] <= self.band[1] <= 1.0:
            raise ValueError(f"band must be two probabilities, low <= high, not {self.band}")
        return self

    @property
    def key(self) -> tuple[str, str]:
        return (self.model, self.kind)

    @property
    def fallback_cap(self) -> float:
        """What an unmeasured pair falling back to this entry may read at most: the precision this
        entry measured at its threshold (its accuracy when nothing cleared; 0 when unmeasured)."""
        if self.clear_accuracy is not None:
            return self.clear_accuracy
        return self.accuracy if self.accuracy is not None else 0.0


class Prior(Frozen):
    """The rule for answers with nothing measured at all (see the module docstring)."""

    margin: float = Field(default=0.05, ge=0, le=1)
    verified_grounding: float = Field(default=0.99, ge=0, le=1)
    note: str = ""

    def calibrator(self, threshold: float) -> Calibrator:
        return Calibrator(
            kind="prior", cap=max(0.0, threshold - self.margin), verified_grounding=self.verified_grounding
        )


class _TableFile(Frozen):
    version: int
    prior: Prior | None = None
    entries: list[CalibrationEntry] = []


class CalibrationTable:
    """Calibration entries by (model, kind), with the prior; see the module docstring.

    ``origins`` says where each entry came from ("default" or "user"), for the lookup's label;
    ``problems`` holds the one-line messages about files that could not be used.
    """

    def __init__(
        self,
        entries: Iterable[CalibrationEntry] = (),
        *,
        prior: Prior | None = None,
        threshold: float = 0.75,
        origins: Mapping[tuple[str, str], str] | None = None,
        problems: Sequence[str] = (),
    ) -> None:
        self.entries: dict[tuple[str, str], CalibrationEntry] = {e.key: e for e in entries}
        self.prior = prior or Prior()
        self.threshold = threshold
        self.origins = dict(origins or {})
        self.problems = list(problems)

    # files ---------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, user_path: Path | None = None, *, default_path: Path = DEFAULT_PATH, threshold: float = 0.75
    ) -> CalibrationTable:
        """The shipped table with the user's file (if any) overriding it entry by entry.

        A user file that is not a calibration table is moved aside (``<name>.corrupt-<time>``) with
        a one-line warning, and the shipped table is used; an unreadable shipped table (a broken
        install) is logged and leaves only the prior.
        """
        problems: list[str] = []
        prior: Prior | None = None
        entries: dict[tuple[str, str], CalibrationEntry] = {}
        origins: dict[tuple[str, str], str] = {}
        try:
            prior, shipped = cls.read(default_path)
        except CalibrationError as exc:
            problems.append(f"the shipped calibration is not usable ({exc}); reinstall caelum-mcp")
            log.error("%s", problems[-1])
        else:
            for entry in shipped:
                entries[entry.key], origins[entry.key] = entry, "default"
        if user_path is not None and user_path.exists():
            try:
                user_prior, mine = cls.read(user_path)
            except CalibrationError as exc:
                problems.append(_move_aside(user_path, str(exc)))
                log.warning("%s", problems[-1])
            else:
                prior = user_prior or prior
                for entry in mine:
                    entries[entry.key], origins[entry.key] = entry, "user"
        return cls(entries.values(), prior=prior, threshold=threshold, origins=origins, problems=problems)

    @staticmethod
    def read(path: Path) -> tuple[Prior | None, list[CalibrationEntry]]:
        """The prior and entries in ``path``; CalibrationError says why it cannot be used."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"cannot read {path}: {exc}") from exc
        try:
            data = _TableFile.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = "/".join(str(p) for p in first["loc"]) or "(top)"
            raise CalibrationError(f"{path} is not a calibration table: {where}: {first['msg']}") from None
        if data.version != FILE_VERSION:
            raise CalibrationError(f"{path} is version {data.version}; this caelum-mcp reads version {FILE_VERSION}")
        return data.prior, data.entries

    def save(self, path: Path) -> None:
        """Write every entry and the prior to ``path`` atomically (a reader never sees half a file)."""
        data = _TableFile(
            version=FILE_VERSION,
            prior=self.prior,
            entries=sorted(self.entries.values(), key=lambda e: e.key),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(json.dumps(data.model_dump(mode="json"), indent=1) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # lookup --------------------------------------------------------------------------------------

    def lookup(self, model: str, kind: str) -> tuple[CalibrationEntry, str]:
        """The entry that calibrates ``model``'s answers on ``kind`` tasks, and a label saying
        where it came from (the lookup order and caps are in the module docstring)."""
        kind = str(kind)
        exact = self.entries.get((model, kind))
        if exact is not None:
            return exact, f"measured {model}/{kind} (n={exact.n}, {self.origins.get(exact.key, 'given')} table)"
        for fallback in ((ANY, kind), (ANY, ANY)):
            entry = self.entries.get(fallback)
            if entry is None:
                continue
            cap = entry.fallback_cap
            capped = entry.model_copy(
                update={
                    "base": entry.base.capped(cap),
                    "with_agreement": entry.with_agreement.capped(cap) if entry.with_agreement else None,
                }
            )
            where = "family" if fallback[1] != ANY else "all models and kinds"
            return capped, (
                f"{where} {fallback[0]}/{fallback[1]} for unmeasured {model}/{kind}, capped at {cap:.2f} "
                f"(n={entry.n}, {self.origins.get(entry.key, 'given')} table)"
            )
        prior = self.prior.calibrator(self.threshold)
        entry = CalibrationEntry(model=model, kind=kind, base=prior, threshold=self.threshold, source="prior")
        return entry, (
            f"prior for unmeasured {model}/{kind}: raw score capped at {prior.cap:.2f} unless grounding "
            f"verified the answer (>= {prior.verified_grounding:g})"
        )


def _move_aside(path: Path, reason: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        path.replace(aside)
    except OSError as exc:
        return (
            f"calibration file {path} is not usable ({reason}) and could not be moved aside ({exc}); "
            "using the shipped calibration"
        )
    return (
        f"calibration file {path} is not usable ({reason}); moved it to {aside.name} and using the shipped "
        "calibration (run `caelum-mcp calibrate` to write a new one)"
    )


def now_iso() -> str:
    """The time to stamp a fitted entry with (UTC, seconds)."""
    return datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
