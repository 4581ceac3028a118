"""mailowl: email attachment analysis gateway."""

__version__ = "0.1.0"
