"""The installed package's version ("0.0.0+source" when run from a source tree that was not installed)."""
from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("bilevel")
except PackageNotFoundError:
    VERSION = "0.0.0+source"
