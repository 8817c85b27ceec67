"""The package version, in one place (``zoo_serving.__version__``)."""

__version__ = "0.1.0"
