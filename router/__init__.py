"""llm-triage: a cost-aware router and cascade gateway for OpenAI-compatible LLM workers."""

__all__ = ["__version__"]

__version__ = "0.1.0"
