"""Calibration tables that tests state explicitly.

With calibration on (the default), an answer of a model nobody measured reads at most the prior's
cap, below the threshold, unless grounding verified it. A test about routing mechanics (streaming,
failover, escalation on a weak answer) states instead that its models were measured and found
calibrated: :func:`calibrated_as_raw` is a table under which the calibrated probability equals the
raw score, for every model and kind. Pass it to ``Router(..., calibration=...)``, or write it where
the server's router reads it with :func:`write_calibrated_as_raw`.
"""

from __future__ import annotations

from pathlib import Path

from caelum_mcp.engine.calibration import USER_FILE, CalibrationEntry, CalibrationTable, Calibrator


def calibrated_as_raw(threshold: float = 0.75) -> CalibrationTable:
    """Every model measured on every kind, its raw score found to be its P(correct)."""
    identity = Calibrator(kind="isotonic", xs=(0.0, 1.0), ys=(0.0, 1.0))
    entry = CalibrationEntry(
        model="*",
        kind="*",
        base=identity,
        n=1000,
        accuracy=0.9,
        clear_accuracy=1.0,  # the fallback cap: 1.0 leaves the raw score as it is
        threshold=threshold,
        source="test: the raw score is calibrated",
    )
    return CalibrationTable([entry], threshold=threshold)


def write_calibrated_as_raw(data_dir: Path, threshold: float = 0.75) -> Path:
    """:func:`calibrated_as_raw` saved as ``<data_dir>/calibration.json``, the user's table."""
    path = data_dir / USER_FILE
    calibrated_as_raw(threshold).save(path)
    return path
