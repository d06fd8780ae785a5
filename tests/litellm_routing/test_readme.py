"""The README's LiteLLM snippets name what exists: the proxy's callback resolves to wattgate's routing, the
deployment hint is the key the routing reads, the Router snippet's imports run."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

from tests.litellm_routing.support import LITELLM_WARNINGS
from tests.litellm_routing.test_proxy import CALLBACK
from wattgate.litellm_routing.core import INSTANCE_HINT

pytestmark = list(LITELLM_WARNINGS)
README = Path(__file__).resolve().parents[2] / "README.md"


def section_blocks(language: str) -> list[str]:
    text = README.read_text()
    start = text.index("\n## Routing inside LiteLLM\n")
    section = text[start : text.index("\n## ", start + 1)]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def test_the_proxy_config_snippet_loads_wattgates_routing() -> None:
    (config_yaml,) = section_blocks("yaml")
    config = yaml.safe_load(config_yaml)
    assert config["litellm_settings"]["callbacks"] == [CALLBACK]  # the one the proxy tests run
    module, _, name = CALLBACK.rpartition(".")
    from wattgate.litellm_routing.callback import WattgateRouting  # noqa: PLC0415 (litellm: imported lazily)

    assert isinstance(getattr(importlib.import_module(module), name), WattgateRouting)
    deployments = config["model_list"]
    assert len({d["model_name"] for d in deployments}) == 1 and all(
        d["litellm_params"]["api_base"] for d in deployments
    )
    assert any(INSTANCE_HINT in d.get("model_info", {}) for d in deployments)


def test_the_router_snippet_imports_run() -> None:
    (python,) = section_blocks("python")
    imports = [line for line in python.splitlines() if line.startswith(("import ", "from "))]
    assert len(imports) == 3
    exec("\n".join(imports), {})  # our own README's import lines
    assert "litellm.callbacks.append(routing)" in python and "await routing.aclose()" in python
