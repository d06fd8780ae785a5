"""The GPU seam: an NVML implementation and a deterministic simulated one."""
