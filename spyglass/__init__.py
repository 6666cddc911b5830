"""Spyglass: see every step a GPT-style transformer takes on your own text."""

__version__ = "0.1.0"
