"""Benchmarks: each prints ratios measured side by side in one run and appends CSV rows.

`make bench` runs all, `make bench B=<name>` one, `QUICK=1` a one-minute version of each.
"""
