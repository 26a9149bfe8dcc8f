"""Tests of the shipped Prometheus rules, promtool unit tests and Alertmanager example."""
