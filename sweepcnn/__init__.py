"""Shared machinery for Part A and Part B: data, training engine, tracking, sweeps and reports."""
