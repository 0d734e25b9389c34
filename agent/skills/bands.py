"""Sensor bands: a skill's readings judged by rule, before any model reads them.

A small model compares numbers against thresholds badly (the 135M gets under half
of the eval set's sensor reports right), while the thresholds themselves are house
rules an operator can write down. Where a skill has a band for every reading of a
request, the answer is the rule's: exact, instant, the same on every device, and
confident (1.0), so it never escalates. The model reads only what no band covers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agent.skills.report_text import readings_in
from edge_slm.contract import SensorBand, SensorReading, SkillSpec


@dataclass(frozen=True, slots=True)
class Verdict:
    label: str
    basis: str  # which reading decided, for the reply's `reason`


def _unit(text: str) -> str:
    return "".join(text.split()).casefold()


def _number(value: float | int | str | bool) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    else:
        try:
            number = float(value.strip())
        except ValueError:
            return None
    return number if math.isfinite(number) else None


def band_label(band: SensorBand, reading: SensorReading) -> str | None:
    """The label ``band`` gives ``reading``, or None when it does not say."""
    if band.unit and reading.unit and _unit(band.unit) != _unit(reading.unit):
        return None
    number = _number(reading.value)
    if number is not None and band.ranges:
        for label, pairs in band.ranges.items():
            for low, high in pairs:
                if (low is None or low <= number) and (high is None or number < high):
                    return label
        return None
    word = str(reading.value).strip().casefold()  # booleans as "true" / "false"
    for state, label in band.states.items():
        if state.casefold() == word:
            return label
    return None


def _describe(reading: SensorReading, label: str) -> str:
    unit = f" {reading.unit}" if reading.unit else ""
    return f"{reading.name} = {reading.value}{unit}: {label}"


def judge(
    spec: SkillSpec, readings: Sequence[SensorReading], *, how: str = "by the skill's bands"
) -> Verdict | None:
    """The bands' answer for these readings, or None when the model must read them."""
    if not spec.bands or not readings:
        return None
    order = list(spec.labels)
    judged: list[tuple[int, SensorReading, str]] = []
    open_ = False
    for reading in readings:
        band = spec.bands.get(reading.name.rsplit("/", 1)[-1])
        label = band_label(band, reading) if band is not None else None
        if label is None:
            open_ = True
        else:
            judged.append((order.index(label), reading, label))
    if not judged:
        return None
    rank, reading, label = max(judged, key=lambda j: j[0])
    if open_ and rank < len(order) - 1:
        return None  # an unjudged reading could still be worse
    worst = [_describe(r, lbl) for k, r, lbl in judged if k == rank]
    return Verdict(label, f"{how}: " + "; ".join(worst))


def judge_text(spec: SkillSpec, text: str) -> Verdict | None:
    """The bands' answer for a report that states its readings in words, or None.

    For a request with no ``sensor`` field: the readings are read from the text
    (``agent/skills/report_text.py``); what could not be read stays open.
    """
    if not spec.bands:
        return None
    return judge(spec, readings_in(text), how="by the skill's bands, read from the text")
