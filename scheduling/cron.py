"""Cron expressions in a time zone: checked with words a person can act on, described in plain
words, and turned into due times.

Due times are wall-clock times of the task's zone. On the day the clocks go forward, a time that
does not exist that day (02:30 in Europe) is due at the first instant after the gap (03:00); on
the day they go back, a time that happens twice is due once, at its first occurrence. A task that
runs every hour follows the hours as they pass: both repeated hours, and not the hour skipped.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo

from cron_descriptor import ExpressionDescriptor, FormatError, Options
from croniter import (  # type: ignore[import-untyped]
    CroniterBadCronError,
    CroniterBadDateError,
    CroniterError,
    croniter,
)

MAX_LENGTH = 100
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# The seed's presets (roadmap.md, the cron appendix), with two more people ask for.
PRESETS = [
    ("*/30 * * * *", "Every 30 minutes"),
    ("0 * * * *", "Every hour"),
    ("0 */6 * * *", "Every 6 hours"),
    ("0 0 * * *", "Daily at midnight"),
    ("0 2 * * *", "Daily at 2 AM"),
    ("0 2 * * 1-5", "Weekdays at 2 AM"),
    ("0 0 * * 0", "Weekly on Sunday"),
    ("0 0 1 * *", "Monthly on the 1st"),
]
# How far a time zone's clocks move at most (a change of offset), with room to spare.
SHIFT = timedelta(hours=3)


class CronError(ValueError):
    """What is wrong with an expression or a time zone, in words that say what to write."""


def zone(name: str) -> tzinfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise CronError(
            f"{name[:60]!r} is not a time zone this machine knows: write one as Europe/Berlin, America/New_York or UTC."
        ) from None


def expand(expression: str) -> str:
    """The expression with its spaces tidied and an alias (@daily) written out in five fields."""
    text = " ".join(expression.split())
    return ALIASES.get(text.lower(), text)


def check(expression: str) -> str:
    """The expression as it is kept (five fields, aliases written out), or CronError."""
    if len(expression) > MAX_LENGTH:
        raise CronError(f"That is {len(expression):,} characters: a cron expression is five short fields.")
    text = expand(expression)
    if not text:
        raise CronError("Write a cron expression: minute hour day-of-month month day-of-week, as 0 2 * * *.")
    if text.startswith("@"):
        if text.lower() == "@reboot":
            raise CronError(
                "@reboot runs at start-up, not at a time: schedules here run at times. Use Run now, "
                "or a time such as @hourly or 0 2 * * *."
            )
        raise CronError(f"{text} is not a schedule: use @hourly, @daily, @weekly, @monthly or @yearly.")
    fields = text.split(" ")
    if len(fields) != 5:
        extra = " (a seconds or a year field is not taken: the minute is the smallest unit)" if len(fields) > 5 else ""
        raise CronError(
            f"That has {len(fields)} field{'s' if len(fields) != 1 else ''}; a cron expression has five: "
            f"minute hour day-of-month month day-of-week, as 0 2 * * *{extra}."
        )
    try:
        croniter(text)
    except (CroniterBadCronError, CroniterError, ValueError) as e:
        raise CronError(f"{text} is not a cron expression: {field_error(fields, str(e))}") from None
    try:
        croniter(text, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        raise CronError(
            f"{text} never fires: no month has that day (as 31 February). Choose a day every month has."
        ) from None
    return text


RANGES = [("minute", 0, 59), ("hour", 0, 23), ("day of the month", 1, 31), ("month", 1, 12), ("day of the week", 0, 7)]


def field_error(fields: list[str], message: str) -> str:
    """The first field that is out of its range or not a number, in words."""
    for i, (text, (name, low, high)) in enumerate(zip(fields, RANGES, strict=True)):
        alone = " ".join(text if j == i else "*" for j in range(5))
        try:
            croniter(alone)
        except (CroniterBadCronError, CroniterError, ValueError):
            return f"the {name} field {text!r} must be * or numbers from {low} to {high} (as 5, 1-5, */15 or 1,15)."
    return message


def describe(expression: str) -> str:
    """The expression in plain words, as "At 02:00, Monday through Friday"."""
    options = Options()
    options.use_24hour_time_format = True
    options.verbose = False
    try:
        return ExpressionDescriptor(expand(expression), options).get_description()
    except (FormatError, ValueError, IndexError, KeyError):
        return expand(expression)


def hourly(expression: str) -> bool:
    """Whether it fires in every hour (its hour field a wildcard): in the hour that happens twice
    in autumn, it fires in both."""
    return expand(expression).split(" ")[1] == "*"


def instants(wall: datetime, where: tzinfo, both: bool = False) -> list[datetime]:
    """The UTC instants at which the zone's clocks show `wall` (naive): one; the first of two
    when the clocks go back (both, with `both`); when they go forward past it, the first instant
    after the gap (none, with `both`: a task of every hour skips the hour that never was)."""
    first = wall.replace(tzinfo=where, fold=0)
    if first.astimezone(UTC).astimezone(where).replace(tzinfo=None) != wall:
        return [] if both else [gap_end(wall, where)]  # an hour that never was is not an hour
    second = wall.replace(tzinfo=where, fold=1)
    found = [first.astimezone(UTC)]
    if both and second.utcoffset() != first.utcoffset():
        found.append(second.astimezone(UTC))
    return found


def gap_end(wall: datetime, where: tzinfo) -> datetime:
    """The instant the clocks jumped over `wall` (a time that did not exist): bisected between the
    readings of the offsets before and after the change."""
    before = wall.replace(tzinfo=where, fold=1).astimezone(UTC)
    after = wall.replace(tzinfo=where, fold=0).astimezone(UTC)
    low, high = min(before, after), max(before, after)
    offset = high.astimezone(where).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(where).utcoffset() == offset:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def walls(expression: str, start: datetime) -> Iterator[datetime]:
    it = croniter(expand(expression), start)
    while True:
        yield it.get_next(datetime)


def next_due(expression: str, zone_name: str, after: datetime) -> datetime | None:
    """The first due time (UTC) strictly after `after`; None if it never fires again."""
    where = zone(zone_name)
    local = after.astimezone(where).replace(tzinfo=None)
    both = hourly(expression)
    best: datetime | None = None
    best_wall: datetime | None = None
    try:
        for wall in walls(expression, local - SHIFT):
            if best_wall is not None and wall - SHIFT > best_wall:
                break
            for instant in instants(wall, where, both):
                if instant > after and (best is None or instant < best):
                    best, best_wall = instant, wall
    except CroniterBadDateError:
        pass
    return best


def last_due(expression: str, zone_name: str, at: datetime) -> datetime | None:
    """The latest due time (UTC) at or before `at`; None if there was none in the last years."""
    where = zone(zone_name)
    local = at.astimezone(where).replace(tzinfo=None)
    both = hourly(expression)
    it = croniter(expand(expression), local + SHIFT + timedelta(minutes=1))
    best: datetime | None = None
    try:
        while True:
            wall = it.get_prev(datetime)
            if best is not None and wall + SHIFT < best.astimezone(where).replace(tzinfo=None):
                break
            for instant in instants(wall, where, both):
                if instant <= at and (best is None or instant > best):
                    best = instant
    except CroniterBadDateError:
        pass
    return best


def due_between(expression: str, zone_name: str, after: datetime, until: datetime, limit: int) -> list[datetime]:
    """The due times in (after, until], at most `limit` of them."""
    found: list[datetime] = []
    t: datetime | None = after
    while len(found) < limit:
        t = next_due(expression, zone_name, t) if t else None
        if t is None or t > until:
            break
        found.append(t)
    return found


def upcoming(expression: str, zone_name: str, now: datetime, count: int = 5) -> list[datetime]:
    """The next `count` due times after `now`."""
    return due_between(expression, zone_name, now, now + timedelta(days=366 * 30), count)
