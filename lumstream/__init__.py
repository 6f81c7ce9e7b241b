"""lumstream: the command line (``lumstream.cli``), its commands and the configuration
that ties the packages below together. Nothing in the project imports this package."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lumstream")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
