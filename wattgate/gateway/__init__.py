"""The OpenAI-compatible gateway: classify, route, proxy (streaming unbuffered), record load."""
