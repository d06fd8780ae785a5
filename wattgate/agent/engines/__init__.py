"""The engine seam: vLLM, TGI, simulated and external (unmanaged) engine instances."""
