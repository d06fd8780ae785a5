"""A realistic Llama-2-70B/H100 profile for tests and benchmarks: the shipped one (``wattgate.profiles.builtin``).

It ships inside the package, so tests that use it never skip: a missing or broken shipped profile fails them.
"""

from __future__ import annotations

from wattgate.profiles.builtin import load_builtin
from wattgate.profiles.table import Profile


def realistic_profile() -> Profile:
    return load_builtin()
