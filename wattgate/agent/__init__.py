"""The per-node agent: runs the plan on a GPU host (engines, drains, clock locks, power telemetry)."""
