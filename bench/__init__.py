"""Reproducible benchmarks of schedctl, with APScheduler measured side by side.

Run them all with ``python -m bench run``; every benchmark prints and returns JSON.
"""
