"""The package version, kept equal to ``version`` in pyproject.toml."""

__version__ = "0.2.0"
