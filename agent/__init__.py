"""The edge agent: answers MQTT requests with an on-device SLM."""

from edge_slm import __version__

__all__ = ["__version__"]
