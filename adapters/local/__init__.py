"""Local adapters that need no network and no key: deterministic, with fault knobs for tests."""
