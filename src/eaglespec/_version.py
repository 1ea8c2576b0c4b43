"""The package version, in one place: the root re-exports it as `eaglespec.__version__`."""

__version__ = "0.1.0"
