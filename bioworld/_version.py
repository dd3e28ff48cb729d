"""The installed package version (the one place it is read; no other bioworld imports)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bioworld")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
