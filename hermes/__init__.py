"""Hermes: load-aware, hang-aware connection dispatch for pre-fork servers."""

__version__ = "0.1.0"
