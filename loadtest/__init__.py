"""Locust load tests for Triton (see the load-test issue)."""
