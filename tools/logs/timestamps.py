"""Timestamps as logs write them, recognised and turned into ``datetime`` s.

Each :class:`TimestampShape` is one way of writing a time (ISO 8601, syslog's ``Jun 14 15:16:01``,
Apache's ``[Sun Dec 04 04:47:44 2005]``, the access log's ``10/Oct/2000:13:55:36 -0700``, Log4j's
``17/06/09 20:10:40``, ...). A file's lines share one shape, found once from a sample
(:mod:`.formats`), so each line costs one match.

Times are naive datetimes as written; a time with a zone is converted to UTC first. A shape
without a year (syslog) takes the year of ``reference`` (the file's modification time), and the
year before when that would put it in the future.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

MONTHS = {
    m: i + 1 for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))
}
_MON = r"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_HMS = r"(?P<H>\d\d):(?P<M>\d\d):(?P<S>\d\d)"
_FRACTION = r"(?:[.,:](?P<f>\d{1,9}))?"
_ZONE = r"(?:\s?(?P<z>Z|[+-]\d\d:?\d\d)\b)?"


@dataclass(frozen=True)
class TimestampShape:
    """One way of writing a time: ``pattern`` has named groups y/yy/mon/m/d/H/M/S (f, z optional)."""

    name: str
    pattern: re.Pattern[str]
    has_year: bool = True

    def parse(self, match: re.Match[str], reference: datetime) -> datetime | None:
        return _to_datetime(match.groupdict(), reference, self.has_year)


def _shape(name: str, pattern: str, *, has_year: bool = True) -> TimestampShape:
    return TimestampShape(name, re.compile(pattern), has_year)


SHAPES: tuple[TimestampShape, ...] = (
    _shape("iso8601", rf"(?P<y>\d{{4}})-(?P<m>\d\d)-(?P<d>\d\d)[T ]{_HMS}{_FRACTION}{_ZONE}"),
    _shape(
        "iso8601-dashed",
        rf"(?P<y>\d{{4}})-(?P<m>\d\d)-(?P<d>\d\d)-(?P<H>\d\d)\.(?P<M>\d\d)\.(?P<S>\d\d){_FRACTION}",
    ),
    _shape("ymd-slashes", rf"(?P<y>\d{{4}})/(?P<m>\d\d)/(?P<d>\d\d)[ T:]{_HMS}{_FRACTION}"),
    _shape("apache", rf"{_DAY} {_MON} +(?P<d>\d{{1,2}}) {_HMS}{_FRACTION} (?P<y>\d{{4}})"),
    _shape("access-log", rf"(?P<d>\d\d)/{_MON}/(?P<y>\d{{4}}):{_HMS}{_FRACTION}{_ZONE}"),
    _shape("syslog", rf"{_MON} +(?P<d>\d{{1,2}}) {_HMS}{_FRACTION}", has_year=False),
    _shape("yy/mm/dd", rf"(?P<yy>\d\d)/(?P<m>\d\d)/(?P<d>\d\d) {_HMS}{_FRACTION}"),
    _shape("yymmdd", r"(?P<yy>\d\d)(?P<m>[01]\d)(?P<d>[0-3]\d) (?P<H>[0-2]\d)(?P<M>[0-5]\d)(?P<S>[0-5]\d)\b"),
    _shape("yyyymmdd-hms", rf"(?P<y>\d{{4}})(?P<m>[01]\d)(?P<d>[0-3]\d)-{_HMS}{_FRACTION}"),
    _shape("dd.mm.yyyy", rf"(?P<d>[0-3]\d)\.(?P<m>[01]\d)\.(?P<y>\d{{4}})[ T:,]{_HMS}{_FRACTION}{_ZONE}"),
    _shape("mm/dd/yyyy", rf"(?P<m>[01]\d)/(?P<d>[0-3]\d)/(?P<y>\d{{4}})[ T:,]{_HMS}{_FRACTION}{_ZONE}"),
    _shape("dd/mm/yyyy", rf"(?P<d>[0-3]\d)/(?P<m>[01]\d)/(?P<y>\d{{4}})[ T:,]{_HMS}{_FRACTION}{_ZONE}"),
    _shape("mm-dd", rf"(?P<m>[01]\d)-(?P<d>[0-3]\d) {_HMS}{_FRACTION}", has_year=False),
    _shape("mm.dd", rf"(?P<m>[01]\d)\.(?P<d>[0-3]\d) {_HMS}{_FRACTION}", has_year=False),
)
SHAPES_BY_NAME = {shape.name: shape for shape in SHAPES}


def _to_datetime(parts: dict[str, str | None], reference: datetime, has_year: bool) -> datetime | None:
    get = parts.get
    try:
        mon = get("mon")
        month = MONTHS[mon.lower()[:3]] if mon else int(parts["m"] or 0)
        year_text = get("y")
        if year_text:
            year = int(year_text)
        else:
            short_year = get("yy")
            year = 2000 + int(short_year) if short_year else reference.year
        fraction = get("f")
        value = datetime(
            year,
            month,
            int(parts["d"] or 0),
            int(parts["H"] or 0),
            int(parts["M"] or 0),
            int(parts["S"] or 0),
            int(fraction[:6].ljust(6, "0")) if fraction else 0,
        )
    except (ValueError, KeyError, TypeError):
        return None
    if not has_year and value > reference + timedelta(days=1):
        try:
            value = value.replace(year=value.year - 1)
        except ValueError:  # 29 February
            return None
    zone = parts.get("z")
    if zone:
        value = _in_utc(value, zone)
    return value


def _in_utc(value: datetime, zone: str) -> datetime:
    if zone == "Z":
        return value
    sign = 1 if zone[0] == "+" else -1
    digits = zone[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4]))
    return value.replace(tzinfo=timezone(sign * offset)).astimezone(UTC).replace(tzinfo=None)


def from_epoch(value: float) -> datetime | None:
    """A Unix time in seconds, milliseconds, microseconds or nanoseconds (told apart by size), in UTC."""
    for scale in (1, 1e3, 1e6, 1e9):
        seconds = value / scale
        if seconds < 1e10:
            try:
                return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
            except (OverflowError, OSError, ValueError):
                return None
    return None


def parse_any(text: str, reference: datetime) -> datetime | None:
    """``text`` as a time in any known shape (or a Unix time); None when none fits it whole."""
    text = text.strip()
    try:
        return from_epoch(float(text))
    except ValueError:
        pass
    for shape in SHAPES:
        match = shape.pattern.fullmatch(text)
        if match:
            return shape.parse(match, reference)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


Parser = Callable[[str], datetime | None]
