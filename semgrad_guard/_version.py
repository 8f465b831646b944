"""The installed version of semgrad-guard, read from the package metadata."""

from importlib import metadata

__version__ = metadata.version("semgrad-guard")
