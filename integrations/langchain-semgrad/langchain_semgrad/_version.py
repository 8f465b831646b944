"""The installed version of langchain-semgrad, read from the package metadata."""

from importlib import metadata

__version__ = metadata.version("langchain-semgrad")
