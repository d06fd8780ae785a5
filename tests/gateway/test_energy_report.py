"""``wattgate report``'s sums: per model, key and source (never mixed), idle apart, a model total, carbon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wattgate.cli import main
from wattgate.embedded_redis import free_port
from wattgate.gateway.energy_meter import key_label, parse_key_names
from wattgate.gateway.energy_report import ReportError, aggregate, parse_duration_s, to_csv, to_table
from wattgate.gateway.settings import ConfigError, GatewaySettings
from wattgate.planner.contract import IDLE_KEY, energy_field


def minute(*cells: tuple[str, str, str, str, float]) -> dict[str, str]:
    """(name, model, key, source, value) cells of one minute, pool SS, status 200 (idle: status idle)."""
    out = {}
    for name, model, key, source, value in cells:
        out[energy_field(name, model, key, "SS", "idle" if key == IDLE_KEY else "200", source)] = str(value)
    return out


def test_rows_sum_minutes_per_model_key_and_source_with_a_model_total() -> None:
    a, m = "team-a", "modelled"
    m1 = minute(("joules", "llama", a, m, 100.0), ("tokens", "llama", a, m, 50), ("requests", "llama", a, m, 2))
    m1 |= minute(("joules", "llama", IDLE_KEY, m, 30.0))
    m2 = minute(("joules", "llama", a, m, 60.0), ("tokens", "llama", a, m, 30), ("requests", "llama", a, m, 1))
    m2 |= minute(("joules", "llama", a, "measured", 9.0), ("tokens", "llama", a, "measured", 3))
    m2 |= minute(("requests", "llama", a, "measured", 1))
    junk = {"not a field": "1", energy_field("joules", "x", "k", "p", "s", m): "nan?"}
    m2 |= minute(("carbon_g", "llama", a, m, 0.25), ("carbon_g", "llama", IDLE_KEY, m, 0.5))
    m2 |= minute(("local_j", "llama", a, m, 60.0))  # one replica split these over its own requests alone
    rows = aggregate([m1, m2, junk])
    got = {(r.model, r.key, r.source): (r.energy_j, r.tokens, r.requests, r.j_per_token) for r in rows}
    assert got == {
        ("llama", "team-a", "modelled"): (160.0, 80, 3, 2.0),
        ("llama", IDLE_KEY, "modelled"): (30.0, 0, 0, None),
        ("llama", "(model total)", "modelled"): (190.0, 80, 3, 190.0 / 80),
        ("llama", "team-a", "measured"): (9.0, 3, 1, 3.0),  # another source: its own row, never summed in
        ("llama", "(model total)", "measured"): (9.0, 3, 1, 3.0),
    }
    total = next(r for r in rows if r.key == "(model total)" and r.source == "modelled")
    assert total.carbon_g == pytest.approx(0.75)  # as the gateways booked it (each second at its intensity)
    table = to_table(rows)
    assert "J/token" in table and "carbon: modelled" in table and "measured: NVML" in table
    assert "60.000 J of these were split by a gateway replica over its own requests alone" in table
    lines = to_csv(rows).splitlines()
    assert lines[0] == "model,key,source,energy_j,tokens,requests,j_per_token,carbon_g,local_split_j"
    assert "llama,team-a,modelled,160.000,80,3,2.0000,0.2500,60.000" in lines
    assert "split by a gateway replica" not in to_table([r for r in rows if r.source == "measured"])


def test_durations_keys_and_settings() -> None:
    assert [parse_duration_s(t) for t in ("90s", "30m", "24h", "7d", "1.5h")] == [90, 1800, 86400, 604800, 5400]
    with pytest.raises(ReportError):
        parse_duration_s("yesterday")
    label = key_label("sk-secret", {})
    assert label.startswith("key-") and len(label) == 16 and "secret" not in label
    assert key_label("sk-secret", parse_key_names([f"{label}=team-a"])) == "team-a"
    assert key_label("", {}) == "anonymous"
    with pytest.raises(ValueError, match="key-<12 hex digits>=NAME"):
        parse_key_names(["team-a"])
    with pytest.raises(ConfigError, match="energy_key_names"):
        GatewaySettings(energy_key_names=("sk-secret=team-a",))
    with pytest.raises(ConfigError, match="energy_carbon_g_per_kwh"):
        GatewaySettings(energy_carbon_g_per_kwh=-1)  # type: ignore[arg-type]  (a number is parsed; this one is bad)


def test_report_options_come_from_the_settings_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["report", "--since", "yesterday"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wattgate report: error: --since:") and "90s, 30m, 24h or 7d" in err
    config = tmp_path / "wg.yaml"
    config.write_text("since: 30m\ncsv: true\nredis_prefix: other\n")
    monkeypatch.setenv("WATTGATE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(["report", "--config", str(config), "--print-settings"]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings["since"] == {"value": "30m", "source": f"file {config}"}
    assert settings["csv"]["value"] == "true" and settings["redis_prefix"]["value"] == "other"
    assert settings["redis_url"]["source"] == "environment WATTGATE_REDIS_URL"
    assert main(["report", "--config", str(config)]) == 1  # nobody listens there: one line, exit 1
    err = capsys.readouterr().err
    assert err.startswith("wattgate report: cannot read the energy minutes from redis") and "Traceback" not in err
