"""Analysers: each turns a sample into one report, computed lazily and at most once per sample.

The contract is in ``contract.py``, the one table of analysers in ``table.py``. This package imports
nothing else of mailowl's: it is the leaf every other layer builds on.
"""
