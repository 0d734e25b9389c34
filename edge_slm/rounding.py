"""How figures are rounded for people: confidences on the wire, costs in CLI output."""

from __future__ import annotations

#: Decimals of a confidence (or a label score) in a reply: edge and cloud alike.
CONFIDENCE_DECIMALS = 4
#: Significant digits of a USD amount: sub-cent prices stay visible, float noise
#: (0.00021050000000000002) does not.
USD_DIGITS = 6


def confidence(value: float) -> float:
    return round(value, CONFIDENCE_DECIMALS)


def usd(value: float) -> float:
    return float(f"{value:.{USD_DIGITS}g}")
