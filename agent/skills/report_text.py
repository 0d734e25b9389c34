"""Readings written in words: a free-text sensor report turned into readings for the bands.

A report such as "Attic temperature has climbed to 31 °C" or "Smoke detected in the
hallway" carries its readings in the text, with no ``sensor`` field. The 135M model
judges such text at chance, and its confidence did not know it (BENCHMARKS.md,
sensor reports). The thresholds are house rules (the skill's bands), so the readings
are read here by pattern and judged by the same bands as structured ones:

* a number with a unit (``°C``, ``%``, ``ppm``, ``µg/m³``, minutes) is given to the
  quantity named nearest to it in its clause (``freezer`` makes a temperature a
  freezer's; ``battery`` or ``humidity`` says what a percentage is);
* a hazard named in a clause (smoke, fire, gas, carbon monoxide, water or a leak,
  an alarm) is ``detected`` when the clause says it happened (detected, tripped,
  going off, wet, a smell of it, smoke in a room) and ``clear`` when it says it did
  not (no, clear, dry, passed).

What cannot be read (a number with no known quantity, a hazard named with neither)
becomes an open reading (``UNREAD``), which no band judges: the bands then answer
only when they find the worst label anyway, and otherwise the model reads the text
and its calibrated confidence decides whether it escalates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge_slm.contract import SensorReading

#: The name of a reading that was seen but not understood (no band has it).
UNREAD = "unread"

_SIGN = r"(?:minus\s+|[-\u2212]\s?)?"
_NUMBER = rf"(?P<num>{_SIGN}\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?|{_SIGN}\d+(?:\.\d+)?)"
_UNIT = (
    r"(?P<unit>°\s*c\b|°|degrees?(?:\s+(?:c|celsius)\b)?|celsius\b|c\b|%|percent\b|ppm\b"
    r"|[µu]g\s*/\s*m(?:³|3)\b|min(?:ute)?s?\b)"
)
_MEASURE = re.compile(_NUMBER + r"\s*" + _UNIT, re.IGNORECASE)
# Numbers that are not readings: clock times, and the digits of a quantity's own name.
_NOT_A_READING = re.compile(r"\d{1,2}:\d{2}|pm\s?2[.,]5|co2|\b\d+(?:st|nd|rd|th)\b", re.IGNORECASE)
_ANY_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")

# Quantity keywords, each with the units it can take (the band's name is the key).
_KEYWORDS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("freezer_temperature", r"freezer", frozenset({"c"})),
    ("temperature", r"temp(?:erature)?s?|thermostat|thermometer", frozenset({"c"})),
    ("humidity", r"humidity|\brh\b", frozenset({"%"})),
    ("battery", r"batter(?:y|ies)", frozenset({"%"})),
    ("co2", r"co2|carbon dioxide", frozenset({"ppm"})),
    ("carbon_monoxide", r"\bco\b|carbon monoxide", frozenset({"ppm"})),
    ("pm2_5", r"pm\s?2[.,]5|particulates?", frozenset({"ug"})),
    ("door_open_duration", r"\bdoor\b|\bopen\b", frozenset({"min"})),
)
_KEYWORD_RES = [
    (name, re.compile(pattern, re.IGNORECASE), units) for name, pattern, units in _KEYWORDS
]
_UNIT_OF_BAND = {"c": "°C", "%": "%", "ppm": "ppm", "ug": "µg/m³", "min": "min"}

# Hazards: the reading each names, and words saying it happened or did not.
_HAZARDS: tuple[tuple[str, str], ...] = (
    ("smoke", r"smoke|fire"),
    ("carbon_monoxide", r"carbon monoxide|\bco\b"),
    ("gas", r"\bgas\b"),
    ("water_leak", r"water|leak(?:s|ing)?|flood(?:ing|ed)?|dripping"),
    ("alarm", r"alarm"),
)
_HAZARD_RES = [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in _HAZARDS]
_HAPPENED = re.compile(
    r"detected|tripped|triggered|going off|went off|sounding|ringing|beeping|\bwet\b|"
    r"flooding|flooded|dripping|leaking|smell|\bsmoke in\b|\bwater on\b|\bleak\b(?!\s+sensor)",
    re.IGNORECASE,
)
_DID_NOT = re.compile(
    r"\bno\b|\bnot\b|\bnothing\b|\bclear\b|\bdry\b|\bpassed\b|\bnormal\b|\bok\b|\bfine\b",
    re.IGNORECASE,
)
# Punctuation ends a clause only before a space or the end: "2,600 ppm" is one number.
_CLAUSES = re.compile(r"[,;.!?](?:\s+|$)|\n+|\s+(?:and|but|while)\s+", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class _Clause:
    text: str
    start: int


def _clauses(text: str) -> list[_Clause]:
    out, pos = [], 0
    for m in _CLAUSES.finditer(text):
        out.append(_Clause(text[pos : m.start()], pos))
        pos = m.end()
    out.append(_Clause(text[pos:], pos))
    return [c for c in out if c.text.strip()]


def _number(raw: str) -> float:
    raw = raw.replace(",", "").replace("\u2212", "-")
    if raw.lower().startswith("minus"):
        return -float(raw[5:].strip())
    return float(raw.replace(" ", ""))


def _unit_key(unit: str) -> str:
    u = unit.lower()
    if u.startswith(("°", "degree", "celsius")) or u == "c":
        return "c"
    if u in {"%", "percent"}:
        return "%"
    if u == "ppm":
        return "ppm"
    if u.startswith("min"):
        return "min"
    return "ug"


def _quantity(clause: str, at: int, unit: str) -> str | None:
    """The band a number at ``at`` in ``clause`` belongs to: the nearest keyword in the
    clause that takes its unit; a temperature with none is a room's."""
    best: tuple[int, str] | None = None
    for name, pattern, units in _KEYWORD_RES:
        if unit not in units:
            continue
        for m in pattern.finditer(clause):
            distance = abs(m.start() - at)
            if best is None or distance < best[0]:
                best = (distance, name)
    if best is not None:
        if best[1] == "temperature" and re.search(r"freezer", clause, re.IGNORECASE):
            return "freezer_temperature"
        return best[1]
    if unit == "c":  # "Wine cellar 14 degrees"
        return "temperature"
    if unit == "ug":
        return "pm2_5"
    return None


def readings_in(text: str) -> list[SensorReading]:
    """The readings a free-text report states; ``UNREAD`` readings for what it states
    that was not understood."""
    readings: list[SensorReading] = []
    for clause in _clauses(text):
        body = clause.text
        used: list[tuple[int, int]] = [m.span() for m in _NOT_A_READING.finditer(body)]
        measured: set[str] = set()
        for m in _MEASURE.finditer(body):
            if any(s <= m.start() < e for s, e in used):
                continue
            unit = _unit_key(m.group("unit"))
            name = _quantity(body, m.start(), unit)
            used.append(m.span())
            if name is None:
                readings.append(SensorReading(name=UNREAD, value=m.group(0)))
                continue
            measured.add(name)
            readings.append(
                SensorReading(name=name, value=_number(m.group("num")), unit=_UNIT_OF_BAND[unit])
            )
        for m in _ANY_NUMBER.finditer(body):  # a number nobody claimed may still matter
            if not any(s <= m.start() < e for s, e in used):
                readings.append(SensorReading(name=UNREAD, value=m.group(0)))
        if "battery" in measured:
            continue  # "smoke detector battery at 18 %": the hazard word names the device
        readings.extend(_hazards(body, measured))
    return readings


def _hazards(clause: str, measured: set[str]) -> list[SensorReading]:
    found = [name for name, pattern in _HAZARD_RES if pattern.search(clause)]
    found = [n for n in found if n not in measured]  # "carbon monoxide 60 ppm" is a number
    if not found:
        return []
    if "alarm" in found and len(found) > 1:
        found.remove("alarm")  # "smoke alarm": the alarm is the smoke's
    if _DID_NOT.search(clause):
        state = "clear"
    elif _HAPPENED.search(clause) or _named_as_substance(clause):
        state = "detected"
    else:
        return [SensorReading(name=UNREAD, value=clause.strip())]
    return [SensorReading(name=name, value=state) for name in found]


_DEVICE = re.compile(
    r"(?:smoke|fire|gas|water|leak|flood|co|carbon monoxide)\s+"
    r"(?:alarm|detector|sensor|system|monitor|heater|pipe|tank|meter)",
    re.IGNORECASE,
)
_SUBSTANCE = re.compile(r"\b(?:smoke|gas)\b", re.IGNORECASE)


def _named_as_substance(clause: str) -> bool:
    """'Smoke in the living room': the hazard itself, not a device named after it."""
    devices = [m.span() for m in _DEVICE.finditer(clause)]
    return any(not any(s <= m.start() < e for s, e in devices) for m in _SUBSTANCE.finditer(clause))
