"""The profiles shipped inside the package, by name, and ``--profile`` resolution (a name or a file path)."""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

from wattgate.profiles.classes import ProfilesError
from wattgate.profiles.table import Profile, ProfileFormatError, load_profile

DEFAULT_PROFILE = "llama-3.1-70b-h100"
_DATA_PACKAGE = "wattgate.profiles.data"


def builtin_names() -> tuple[str, ...]:
    """Names of the shipped profiles (file stems under ``wattgate/profiles/data``), sorted."""
    root = resources.files(_DATA_PACKAGE)
    return tuple(sorted(p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json")))


def load_builtin(name: str = DEFAULT_PROFILE) -> Profile:
    """Load a shipped profile by name (cached: every caller shares one validated Profile)."""
    return _load_builtin(name)


@functools.cache
def _load_builtin(name: str) -> Profile:
    names = builtin_names()
    if name not in names:
        raise ProfilesError(f"unknown builtin profile {name!r}; builtin profiles: {', '.join(names) or 'none'}")
    text = resources.files(_DATA_PACKAGE).joinpath(f"{name}.json").read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ProfileFormatError(f"builtin profile {name!r} is not valid JSON: {exc}") from exc
    return load_profile(doc)


def resolve_profile(spec: str) -> Profile:
    """A builtin profile name, or else the path of a profile file (what ``--profile`` takes)."""
    text = spec.strip()
    if not text:
        raise ProfilesError("empty profile name: give a builtin name or the path of a profile file")
    if text in builtin_names():
        return load_builtin(text)
    path = Path(text).expanduser()
    if not path.exists():
        known = ", ".join(builtin_names()) or "none"
        raise ProfilesError(f"profile {spec!r} is neither a builtin profile ({known}) nor an existing file")
    return load_profile(path)


def profile_or_default(spec: str | None) -> Profile:
    """What an optional ``--profile`` gives: ``resolve_profile(spec)``, or the shipped default without one."""
    return resolve_profile(spec) if spec else load_builtin()
