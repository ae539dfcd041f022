"""Fake providers on 127.0.0.1 that speak each provider's documented wire protocol, with fault knobs."""
