"""llm-triage: a cost-aware router and cascade gateway for OpenAI-compatible LLM workers."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("llm-triage")  # one version: pyproject.toml's, as installed
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
