"""Anthropic adapters: `anthropic` (the Messages API, streamed)."""
