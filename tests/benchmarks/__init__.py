"""Benchmarks of snapgroup on the local cluster: the freeze window against a naive procedure, and scale.

Run from the repository root with ``make bench`` (``PYTHONPATH=tests python -m benchmarks --report
docs/benchmarks``); ``python -m benchmarks --quick --report DIR`` is a short smoke run. They measure
and report, and assert nothing about timings: the report marks each target met or missed.
"""
