"""Offline trace replay: how much energy wattgate would save on a workload, and what it does to latency."""
