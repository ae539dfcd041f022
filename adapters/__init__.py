"""Provider adapters for TTH: one small module per provider and modality.

Every adapter subclasses one of the bases in `adapters.base` and is found by
name through the `tth.adapters` entry-point group (see `adapters.registry`).
"""
