"""The version of weightport, written into every output's metadata (one place, imported by nothing heavier)."""

__version__ = "0.1.0"
