"""The cloud relay: forwards escalations to a large LLM (see issue #3)."""

from edge_slm import __version__

__all__ = ["__version__"]
