"""Grafana dashboards for schedctl and the code that builds them (see build.py)."""
