"""litellm stays off wattgate's own paths: the gateway, the CLI and the routing core never import it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = "import sys, {modules}; print(sorted(m for m in sys.modules if m == 'litellm' or m.startswith('litellm.'))[:1])"


def imported_litellm(*modules: str) -> bool:
    code = PROBE.format(modules=", ".join(modules))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    return out.stdout.strip() != "[]"


def test_the_gateway_and_the_routing_core_do_not_import_litellm() -> None:
    assert not imported_litellm("wattgate.cli", "wattgate.gateway.app", "wattgate.gateway.cli")
    assert not imported_litellm("wattgate.litellm_routing", "wattgate.litellm_routing.core")
    assert imported_litellm("wattgate.litellm_routing.callback")  # the probe can see it where it is


def test_the_import_contract_covers_every_module_of_ours_but_the_integration() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = [
        c
        for c in config["tool"]["importlinter"]["contracts"]
        if c.get("forbidden_modules") == ["wattgate.litellm_routing"]
    ]
    ours = {
        f"wattgate.{p.stem}" for p in (ROOT / "wattgate").iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
    }
    assert ours - {"wattgate.__init__", "wattgate.__main__", "wattgate.litellm_routing"} <= set(
        contract["source_modules"]
    )
