"""Motif: upload a piece of music, get more music like it."""

__version__ = "0.1.0"
