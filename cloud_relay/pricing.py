"""Estimated cost of an LLM call from the configured price table."""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

from cloud_relay.config import ModelPrice


def price_for(prices: Mapping[str, ModelPrice], model: str) -> ModelPrice | None:
    """The exact entry for ``model``, else the longest matching glob pattern."""
    if model in prices:
        return prices[model]
    matches = [pattern for pattern in prices if fnmatchcase(model, pattern)]
    if not matches:
        return None
    return prices[max(matches, key=len)]


class PriceBook:
    """:func:`estimate_cost` with each model's price looked up once (the table is fixed)."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = prices
        self._found: dict[str, ModelPrice | None] = {}

    def cost(self, model: str, tokens_in: int, tokens_out: int) -> float | None:
        try:
            price = self._found[model]
        except KeyError:
            price = self._found[model] = price_for(self._prices, model)
        if price is None:
            return None
        return (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) / 1_000_000


def estimate_cost(
    prices: Mapping[str, ModelPrice], model: str, tokens_in: int, tokens_out: int
) -> float | None:
    """USD for one call; None when no price entry matches (not even ``*``)."""
    price = price_for(prices, model)
    if price is None:
        return None
    return (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) / 1_000_000
