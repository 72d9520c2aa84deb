"""Time in any CF calendar: the dates of a time axis as xarray decodes them, whatever their calendar.

A time axis is either ``numpy.datetime64`` (what xarray decodes the standard and proleptic_gregorian calendars to)
or an object array of ``cftime`` dates of one calendar: standard/gregorian, proleptic_gregorian, noleap/365_day,
all_leap/366_day, 360_day or julian (what xarray decodes the others to, or every calendar with
``use_cftime=True``). This module reads both without converting one into the other (a noleap or 360_day date is
not a date of the Gregorian calendar: 2019-02-30 does not exist there, and numpy would silently read a noleap
2020-03-01 as the 61st day of a leap year):

* the calendar-independent components (y, m, d, h, mi, s, us) of every date (:func:`date_fields`), which order
  the dates of every calendar lexicographically and name them (:func:`time_text`);
* the day of the year d (1 on 1 January) and the length N of that year *in the date's calendar*
  (:func:`day_of_year`, :func:`days_in_year`): 360 for 360_day, 365 for noleap, 366 for all_leap, 365 or 366 by
  the Julian or Gregorian rule (355 for 1582 in the standard calendar);
* the time encoding of a CF file (``units``, ``calendar``) carried from an input to an output
  (:func:`time_encoding`, :func:`encode_times`, :func:`decode_times`);
* inclusive period bounds given as ISO dates, applied to either kind of axis (:func:`within`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cftime
import numpy as np
import pandas as pd
import xarray as xr

from diffscale.validation import ConfigError

__all__ = [
    "CALENDARS",
    "DEFAULT_CALENDAR",
    "DateFields",
    "TimeEncoding",
    "calendar_of",
    "check_times",
    "comparable_calendars",
    "date_fields",
    "date_keys",
    "day_of_year",
    "days_in_year",
    "decode_times",
    "encode_times",
    "encoding_attributes",
    "is_cftime",
    "is_time_bound",
    "parse_time_bound",
    "same_calendar",
    "time_encoding",
    "time_text",
    "with_encoded_time",
    "within",
]

CALENDARS: tuple[str, ...] = (
    "standard",
    "gregorian",
    "proleptic_gregorian",
    "noleap",
    "365_day",
    "all_leap",
    "366_day",
    "360_day",
    "julian",
)
"""The CF calendars (``gregorian`` is the deprecated name of ``standard``; ``365_day`` and ``366_day`` are
``noleap`` and ``all_leap``)."""
DEFAULT_CALENDAR = "proleptic_gregorian"
"""The calendar of a ``datetime64`` axis that carries no encoding."""
_GREGORIAN_LIKE = ("standard", "gregorian", "proleptic_gregorian")
_EPOCH = "1970-01-01 00:00:00"
_UNIT_SECONDS = (("hours", 3600), ("minutes", 60), ("seconds", 1))
_ISO = re.compile(
    r"^\s*(?P<year>-?\d{1,4})(?:-(?P<month>\d{1,2})(?:-(?P<day>\d{1,2})"
    r"(?:[T ](?P<hour>\d{1,2})(?::(?P<minute>\d{1,2})(?::(?P<second>\d{1,2})(?:\.(?P<fraction>\d{1,9}))?)?)?)?)?)?\s*$"
)


def is_cftime(times: Any) -> bool:
    """Whether ``times`` (an array or one value) holds cftime dates."""
    array = np.asarray(times)
    if array.dtype.kind != "O" or array.size == 0:
        return False
    return isinstance(array.flat[0], cftime.datetime)


def check_times(values: Any, what: str = "times") -> np.ndarray:
    """``values`` as a 1-D time axis: ``datetime64`` (as given) or an object array of cftime dates of one calendar
    (as given, never converted); ConfigError naming ``what`` otherwise."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ConfigError(f"{what}: must be a 1-D array of dates, got shape {array.shape}")
    if array.dtype.kind == "M":
        return array
    if array.dtype.kind == "O" and array.size and all(isinstance(value, cftime.datetime) for value in array):
        calendars = {_calendar_name(value.calendar) for value in array}
        if len(calendars) > 1:
            raise ConfigError(f"{what}: mixes the calendars {', '.join(sorted(calendars))}; give dates of one calendar")
        return array
    raise ConfigError(
        f"{what}: must be numpy datetime64 or cftime dates (as xarray decodes a CF time axis in any calendar), "
        f"got {array.dtype}"
    )


def _calendar_name(name: str) -> str:
    """The CF name of a calendar (cftime spells the standard calendar 'standard' or 'gregorian')."""
    return str(name).lower()


_ALIASES = {"gregorian": "standard", "365_day": "noleap", "366_day": "all_leap"}


def same_calendar(first: str, second: str) -> bool:
    """Whether two CF calendar names name one calendar (``gregorian`` is ``standard``, ``365_day`` ``noleap``,
    ``366_day`` ``all_leap``)."""
    first, second = _calendar_name(first), _calendar_name(second)
    return _ALIASES.get(first, first) == _ALIASES.get(second, second)


def calendar_of(times: Any) -> str:
    """The calendar of a time axis: the cftime dates' own, or :data:`DEFAULT_CALENDAR` for ``datetime64``."""
    array = np.asarray(times)
    if is_cftime(array):
        return _calendar_name(array.flat[0].calendar)
    return DEFAULT_CALENDAR


@dataclass(frozen=True)
class DateFields:
    """The calendar-independent components of T dates, each an int64 array (T,)."""

    year: np.ndarray
    month: np.ndarray
    day: np.ndarray
    hour: np.ndarray
    minute: np.ndarray
    second: np.ndarray
    microsecond: np.ndarray


def date_fields(times: Any) -> DateFields:
    """(y, m, d, h, mi, s, us) of every date of ``times`` (datetime64 or cftime), as its calendar names it."""
    array = np.atleast_1d(np.asarray(times))
    if is_cftime(array):
        parts = np.array(
            [(d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond) for d in array], dtype=np.int64
        ).reshape(-1, 7)
        return DateFields(*(parts[:, i] for i in range(7)))
    index = pd.DatetimeIndex(np.asarray(array, dtype="datetime64[ns]"))
    return DateFields(
        *(
            np.asarray(getattr(index, name), dtype=np.int64)
            for name in ("year", "month", "day", "hour", "minute", "second", "microsecond")
        )
    )


@lru_cache(maxsize=4096)
def _year_length(year: int, calendar: str) -> int:
    start = cftime.datetime(year, 1, 1, calendar=calendar)
    return (cftime.datetime(year + 1, 1, 1, calendar=calendar) - start).days


def days_in_year(times: Any) -> np.ndarray:
    """N, the days of each date's year in its calendar (float64, (T,))."""
    array = np.atleast_1d(np.asarray(times))
    if not is_cftime(array):
        index = pd.DatetimeIndex(np.asarray(array, dtype="datetime64[ns]"))
        return np.where(index.is_leap_year, 366.0, 365.0)
    calendar = calendar_of(array)
    return np.array([_year_length(int(d.year), calendar) for d in array], dtype=np.float64)


def day_of_year(times: Any) -> np.ndarray:
    """d, the day of the year of each date in its calendar (1 on 1 January; int64, (T,))."""
    array = np.atleast_1d(np.asarray(times))
    if not is_cftime(array):
        return np.asarray(pd.DatetimeIndex(np.asarray(array, dtype="datetime64[ns]")).day_of_year, dtype=np.int64)
    return np.array([d.dayofyr for d in array], dtype=np.int64)


def time_text(value: Any, unit: str = "m") -> str:
    """A date as ISO 8601 text in its own calendar: to the minute (``unit='m'``, ``2019-02-30T06:00``), the hour
    (``'h'``), the second (``'s'``) or the nanosecond (``'ns'``, ``2019-02-30T06:00:00.000000000``: the text numpy
    gives a ``datetime64[ns]``)."""
    if not isinstance(value, cftime.datetime):
        return str(np.datetime_as_string(np.datetime64(value, "ns"), unit=unit))
    date = f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}"
    if unit == "h":
        return date
    date += f":{value.minute:02d}"
    if unit == "m":
        return date
    date += f":{value.second:02d}"
    if unit == "s":
        return date
    if unit == "ns":
        return f"{date}.{value.microsecond * 1000:09d}"
    raise ValueError(f"time_text: unit {unit!r} is not one of 'h', 'm', 's', 'ns'")


# -- period bounds ---------------------------------------------------------------------------------------------
def _key(year: int, month: int, day: int, hour: int, minute: int, second: int, microsecond: int) -> int:
    """A calendar-independent order of dates: (y, m, d, h, mi, s, us) compared lexicographically, as one integer."""
    return (((((year * 16 + month) * 32 + day) * 32 + hour) * 64 + minute) * 64 + second) * 1_000_000 + microsecond


def date_keys(times: Any) -> np.ndarray:
    """One Python integer per date (an object array) ordering the dates of any calendar as their components
    (y, m, d, h, mi, s, us) do: equal keys are the same date, whether given as datetime64 or cftime."""
    fields = date_fields(times)
    columns = zip(
        *(getattr(fields, name).tolist() for name in DateFields.__dataclass_fields__),
        strict=True,
    )
    return np.array([_key(*parts) for parts in columns], dtype=object)


def _bound_key(bound: Any, end: bool) -> int:
    """The key of an inclusive bound (a datetime64, or the components of a cftime date). An end bound at the last
    nanosecond of a proleptic Gregorian month (a period ending '2019-02', '2019' or '2019-02-28') closes that month
    in every calendar, so that a 360_day February keeps its 29th and 30th."""
    if isinstance(bound, cftime.datetime):
        return _key(bound.year, bound.month, bound.day, bound.hour, bound.minute, bound.second, bound.microsecond)
    value = np.datetime64(bound, "ns")
    following = value + np.timedelta64(1, "ns")
    fields = date_fields(np.array([following]))
    if end and fields.day[0] == 1 and following.astype("datetime64[D]") == following:
        year, month = int(fields.year[0]), int(fields.month[0])
        return _key(year, month, 1, 0, 0, 0, 0) - 1  # everything before the next month starts
    fields = date_fields(np.array([value]))
    return _key(*(int(getattr(fields, name)[0]) for name in DateFields.__dataclass_fields__))


def within(times: Any, start: Any, end: Any) -> np.ndarray:
    """Whether each of ``times`` lies in [start, end] (both inclusive; None: unbounded). The bounds are instants
    of the proleptic Gregorian calendar (``datetime64``, e.g. a configuration's periods) or dates of the axis'
    calendar; for cftime dates they compare by their components (y, m, d, h, mi, s, us), the order of every
    calendar, and a ``datetime64`` end at the last instant of a Gregorian month (a period ending '2019-02')
    closes that month in the axis' calendar (a 360_day February keeps its 29th and 30th)."""
    array = np.atleast_1d(np.asarray(times))
    if not is_cftime(array):
        inside = np.ones(array.size, dtype=bool)
        values = np.asarray(array, dtype="datetime64[ns]")
        if start is not None:
            inside &= values >= np.datetime64(start, "ns")
        if end is not None:
            inside &= values <= np.datetime64(end, "ns")
        return inside
    keys = date_keys(array)
    inside = np.ones(array.size, dtype=bool)
    if start is not None:
        inside &= np.asarray(keys >= _bound_key(start, end=False), dtype=bool)
    if end is not None:
        inside &= np.asarray(keys <= _bound_key(end, end=True), dtype=bool)
    return inside


def is_time_bound(value: Any) -> bool:
    """Whether ``value`` can bound a time selection: a datetime64 or cftime date, or ISO text (``2019-03-25``,
    ``2019-02-30T06:00``: a date of some calendar; whether it is one of the input's is checked against the input)."""
    if isinstance(value, cftime.datetime | np.datetime64):
        return True
    text = str(value)
    if _ISO.match(text):
        return True
    try:
        np.datetime64(text)
    except ValueError:
        return False
    return True


def parse_time_bound(text: Any, calendar: str, what: str, end: bool = False, source: str = "the input") -> Any:
    """An inclusive bound given as ISO text (``2019-02-30``, ``2019-02-30T06:00``, ``2019-02``, ``2019``) as a
    date of ``calendar``: the first instant it names, or with ``end`` the last (the whole day, month or year);
    a ``datetime64``/cftime value is returned as it is. ConfigError naming ``what`` and ``source`` when the text
    is not a date of that calendar."""
    if not isinstance(text, str):
        return text
    match = _ISO.match(text)
    example = "e.g. 2019-03-25 or 2019-03-25T06:00"
    if match is None:
        raise ConfigError(f"{what} = {text!r}: not an ISO date or time ({example})")
    parts = {name: int(value) for name, value in match.groupdict().items() if value is not None and name != "fraction"}
    fraction = match.group("fraction")
    microsecond = int(fraction[:6].ljust(6, "0")) if fraction else 0
    given = [name for name in ("year", "month", "day", "hour", "minute", "second") if name in parts]
    try:
        first = cftime.datetime(
            parts["year"],
            parts.get("month", 1),
            parts.get("day", 1),
            parts.get("hour", 0),
            parts.get("minute", 0),
            parts.get("second", 0),
            microsecond,
            calendar=calendar,
        )
    except ValueError:
        raise ConfigError(
            f"{what} = {text!r}: not a date of the {calendar} calendar of {source} (give a date that calendar "
            f"has{_hint(calendar)})"
        ) from None
    if not end or fraction:
        return first
    last = given[-1]
    if last == "year":
        following = cftime.datetime(first.year + 1, 1, 1, calendar=calendar)
    elif last == "month":
        following = cftime.datetime(first.year + (first.month == 12), first.month % 12 + 1, 1, calendar=calendar)
    else:
        step = {"day": 86400, "hour": 3600, "minute": 60, "second": 1}[last]
        following = first + np.timedelta64(step, "s").item()
    return following - np.timedelta64(1, "us").item()


def comparable_calendars(first: Any, second: Any, what: str) -> None:
    """ConfigError (one line naming both calendars and the way out) unless the dates of ``first`` and ``second``
    are of one calendar, the standard and proleptic Gregorian ones (and datetime64) counting as one."""
    calendars = [calendar_of(times) for times in (first, second)]
    if same_calendar(*calendars) or set(calendars) <= set(_GREGORIAN_LIKE):
        return
    raise ConfigError(
        f"{what}: its times are in the {calendars[1]} calendar, the ensemble's in the {calendars[0]} calendar; "
        "give both in one calendar (xarray's Dataset.convert_calendar)"
    )


def _hint(calendar: str) -> str:
    """What the calendar's February holds, the usual reason a date is missing from it."""
    days = {"noleap": 28, "365_day": 28, "360_day": 30, "all_leap": 29, "366_day": 29}.get(calendar)
    return f": every February has {days} days" if days is not None else ""


# -- encoding --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeEncoding:
    """How a CF file stores its time: ``units`` (``<unit> since <date>``) and ``calendar``."""

    units: str
    calendar: str


def time_encoding(coordinate: xr.DataArray | None) -> TimeEncoding | None:
    """The units and calendar a decoded time coordinate was stored with (its ``encoding``, kept by xarray when it
    read the file); None when it has none (e.g. a Dataset built in memory)."""
    if coordinate is None:
        return None
    units, calendar = coordinate.encoding.get("units"), coordinate.encoding.get("calendar")
    if not units:
        return None
    if calendar is None:
        calendar = calendar_of(coordinate.values) if is_cftime(coordinate.values) else "standard"
    return TimeEncoding(str(units), _calendar_name(calendar))


def _check_encoding(units: str, calendar: str) -> None:
    if calendar not in CALENDARS:
        raise ConfigError(f"time calendar {calendar!r}: not a CF calendar; use one of {', '.join(CALENDARS)}")
    if " since " not in units:
        raise ConfigError(f"time units {units!r}: not CF time units ('<unit> since <date>', e.g. '{_default(3600)}')")


def _default(seconds: int) -> str:
    return f"{dict((s, n) for n, s in _UNIT_SECONDS)[seconds]} since {_EPOCH}"


def _as_calendar_dates(times: np.ndarray, calendar: str) -> np.ndarray:
    """``times`` as cftime dates of ``calendar`` (datetime64 dates by their components; cftime ones as they are)."""
    if is_cftime(times):
        if not same_calendar(calendar_of(times), calendar):
            raise ConfigError(
                f"times: dates of the {calendar_of(times)} calendar cannot be written in the {calendar} calendar "
                f"(give the encoding of their own calendar)"
            )
        return times
    fields = date_fields(times)
    columns = zip(*(getattr(fields, name).tolist() for name in DateFields.__dataclass_fields__), strict=True)
    try:
        return np.array([cftime.datetime(*parts, calendar=calendar) for parts in columns], dtype=object)
    except ValueError as error:
        raise ConfigError(f"times: not dates of the {calendar} calendar ({error})") from None


def encode_times(
    times: np.ndarray, units: str | None = None, calendar: str | None = None
) -> tuple[np.ndarray, str, str]:
    """CF time values of ``times`` and their (units, calendar).

    Given ``units`` and ``calendar`` (an input's encoding), the times are stored in them: int64 when every value is
    a whole number of the unit, else float64, and each must decode back to its date exactly (ConfigError
    otherwise). Without them: int64 counts since 1970-01-01 in the coarsest of hours, minutes and seconds that
    holds every time exactly, in the times' own calendar (:data:`DEFAULT_CALENDAR` for ``datetime64``).
    Sub-second times are refused."""
    times = check_times(times)
    if times.dtype.kind == "M":
        if np.any(np.isnat(times)):
            raise ConfigError("times: contains NaT")
        whole = times.astype("datetime64[s]")
        if not np.array_equal(whole.astype(times.dtype), times):
            raise ConfigError("times: sub-second times cannot be encoded (use whole seconds)")
    elif any(date.microsecond for date in times):
        raise ConfigError("times: sub-second times cannot be encoded (use whole seconds)")
    if units is None:
        calendar = calendar or calendar_of(times)
        _check_encoding(_default(1), calendar)
        if times.dtype.kind == "M" and calendar == DEFAULT_CALENDAR:
            seconds = (times.astype("datetime64[s]") - np.datetime64(_EPOCH.replace(" ", "T"), "s")).astype(np.int64)
        else:
            dates = _as_calendar_dates(times, calendar)
            seconds = np.asarray(cftime.date2num(list(dates), _default(1), calendar), dtype=np.int64)
        for name, size in _UNIT_SECONDS:
            if np.all(seconds % size == 0):
                return seconds // size, f"{name} since {_EPOCH}", calendar
        raise AssertionError("unreachable: seconds always divide")
    calendar = _calendar_name(calendar or (calendar_of(times) if is_cftime(times) else "standard"))
    _check_encoding(units, calendar)
    dates = _as_calendar_dates(times, calendar)
    try:
        values = np.asarray(cftime.date2num(list(dates), units, calendar), dtype=np.float64)
    except ValueError as error:
        raise ConfigError(f"time units {units!r} ({calendar}): cannot encode the times ({error})") from None
    rounded = np.round(values)
    encoded = rounded.astype(np.int64) if np.all(rounded == values) else values
    back = cftime.num2date(encoded, units, calendar, only_use_cftime_datetimes=True)
    if not np.array_equal(date_keys(np.asarray(back, dtype=object)), date_keys(dates)):
        raise ConfigError(
            f"time units {units!r} ({calendar}): the times are not held exactly; write them in finer units"
        )
    return encoded, units, calendar


def decode_times(
    values: np.ndarray, units: str, calendar: str = DEFAULT_CALENDAR, use_cftime: bool = False
) -> np.ndarray:
    """The dates that ``xarray.open_dataset`` decodes CF time ``values`` in ``units`` and ``calendar`` to:
    ``datetime64[ns]`` for the standard and proleptic_gregorian calendars within its range, cftime dates
    otherwise; with ``use_cftime`` cftime dates of every calendar (what ``use_cftime=True`` reads). The inverse
    of :func:`encode_times`."""
    calendar = _calendar_name(calendar)
    _check_encoding(units, calendar)
    if use_cftime:
        dates = cftime.num2date(np.asarray(values), units, calendar, only_use_cftime_datetimes=True)
        return np.asarray(dates, dtype=object).reshape(-1)
    variable = xr.Dataset({"time": ("time", np.asarray(values), {"units": units, "calendar": calendar})})
    return np.asarray(xr.decode_cf(variable)["time"].values)


def with_encoded_time(dataset: xr.Dataset) -> xr.Dataset:
    """``dataset`` with its time coordinate replaced by the stored values of its encoding (:func:`time_encoding`,
    else :func:`encode_times`' default) and ``units``/``calendar`` attributes, so that ``to_netcdf`` writes them
    verbatim (xarray would rewrite the units' reference date in its own spelling)."""
    if "time" not in dataset.coords:
        return dataset
    encoding = time_encoding(dataset["time"])
    units, calendar = (encoding.units, encoding.calendar) if encoding is not None else (None, None)
    values, units, calendar = encode_times(np.atleast_1d(dataset["time"].values), units, calendar)
    attributes = {**dataset["time"].attrs, "units": units, "calendar": calendar}
    return dataset.assign_coords(time=xr.Variable("time", values, attributes))


def encoding_attributes(encoding: TimeEncoding | Mapping[str, str] | None) -> tuple[str | None, str | None]:
    """(units, calendar) of an encoding given as a :class:`TimeEncoding`, a mapping or None."""
    if encoding is None:
        return None, None
    if isinstance(encoding, TimeEncoding):
        return encoding.units, encoding.calendar
    return encoding.get("units"), encoding.get("calendar")
