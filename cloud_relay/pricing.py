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


def estimate_cost(
    prices: Mapping[str, ModelPrice], model: str, tokens_in: int, tokens_out: int
) -> float | None:
    """USD for one call; None when no price entry matches (not even ``*``)."""
    price = price_for(prices, model)
    if price is None:
        return None
    return (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) / 1_000_000
