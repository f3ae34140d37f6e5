"""Benchmarks that print figures (ratios measured in the same run); never pass/fail tests."""
