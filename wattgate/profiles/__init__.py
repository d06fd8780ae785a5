"""The shared vocabulary (request classes, pools, SLO targets) and measured profile tables.

This package imports nothing else of wattgate's: every other package may depend on it.
"""
