"""Tests of the Grafana dashboards and the code that builds them."""
