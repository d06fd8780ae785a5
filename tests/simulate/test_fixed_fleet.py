"""``--fixed-fleet``: the fleet spec, a replay whose plans never start or stop an instance, and the comparison
(the fleet as one pool at the highest clock, wattgate's pools and clocks on it, wattgate fully managed).
Every energy and latency figure is modelled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.simulate.test_cli import trace
from tests.simulate.test_replay import SERVING, mixed
from wattgate.cli import main
from wattgate.planner.model import Group
from wattgate.profiles.builtin import load_builtin
from wattgate.profiles.classes import RequestType, SloTargets
from wattgate.servingmodel.cluster import Lifecycle
from wattgate.simulate.engine import Arrival, Behaviour, Cluster, Result
from wattgate.simulate.fleet import FixedFleet
from wattgate.simulate.model import TYPE_INDEX, Model
from wattgate.simulate.report import Prices, document, table, within_slo
from wattgate.simulate.run import SimSettings, simulate
from wattgate.simulate.trace import SimulateError


def test_n_is_n_tp8_instances_one_node_each() -> None:
    fleet = FixedFleet.parse("3")
    assert fleet.counts == ((8, 3),) and fleet.size == 3 and fleet.gpus == 24
    assert [(f.node, f.gpus) for f in fleet.instances] == [(f"node-{i}", tuple(range(8))) for i in range(3)]


def test_a_list_packs_the_widest_first_and_never_spans_nodes() -> None:
    fleet = FixedFleet.parse(" 1xTP2, 4xTP8,3xtp4 ,1xTP2")
    assert fleet.counts == ((8, 4), (4, 3), (2, 2))
    assert fleet.size == 9 and fleet.describe() == "4 x TP8, 3 x TP4, 2 x TP2"
    inst = fleet.instances
    assert len({f.id for f in inst}) == 9
    held = [(f.node, g) for f in inst for g in f.gpus]
    assert len(held) == len(set(held)) == 4 * 8 + 3 * 4 + 2 * 2  # no GPU twice
    assert all(len(f.gpus) == f.tp and max(f.gpus) < 8 for f in inst)
    assert fleet.gpus == 8 * 6  # 4 nodes of TP8, TP4+TP4, TP4+TP2+TP2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected N"),
        ("0", "at least one instance"),
        ("-2", "expected N"),
        ("two", "expected N"),
        ("4xTP8,", "expected N"),
        ("4TP8", "expected N"),
        ("4xTP3", "TP must be one of"),
        ("0xTP8", "each count must be >= 1"),
        ("4xTP16", "TP must be one of"),
    ],
)
def test_a_bad_spec_is_a_clear_error(spec: str, message: str) -> None:
    with pytest.raises(SimulateError, match=message) as info:
        FixedFleet.parse(spec)
    assert str(info.value).startswith("--fixed-fleet")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fixed-fleet", "4xTP5"], "--fixed-fleet: TP must be one of"),
        (["--fixed-fleet", "lots"], "--fixed-fleet: expected N"),
        (["--fixed-fleet", "2", "--gpus", "32"], "--gpus and --fixed-fleet"),
        (["--policies", "fixed-wattgate"], "need(s) --fixed-fleet"),
    ],
)
def test_the_cli_rejects_bad_fleets_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["simulate", str(trace(tmp_path / "t.csv", 60)), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wattgate simulate: error:") and message in err and "Traceback" not in err


def test_a_plan_moves_fixed_instances_between_pools_without_restarting_them() -> None:
    profile = load_builtin()
    fleet = FixedFleet.parse("2")
    mm, ll = TYPE_INDEX["MM"], TYPE_INDEX["LL"]
    arrivals = [*(Arrival(k * 0.5, mm, mm, 800, 200) for k in range(4)), Arrival(5.5, ll, ll, 2000, 600)]
    r = Result("t", 10)
    model = Model(profile, SloTargets())
    cluster = Cluster(SERVING, model, 16, Lifecycle(), Behaviour(), r, SimSettings().edges, arrivals, fleet.instances)
    top, low = (profile.clocks(8, RequestType.parse("MM"))[i] for i in (-1, 0))
    cluster.apply(((Group("MM", 8, top, 2, 1.0, 1.0),), {"MM": {"MM": 1.0}}), 0.0, first=True)
    for k in range(4):
        cluster.route(k)
    ids = set(cluster.live)
    assert ids == {f.id for f in fleet.instances} and {ri.inst.pool for ri in cluster.live.values()} == {"MM"}
    plan = (Group("MM", 8, low, 1, 1.0, 1.0), Group("LL", 8, low, 1, 1.0, 1.0))
    cluster.apply((plan, {"MM": {"MM": 1.0}, "LL": {"LL": 1.0}}), 5.0, first=False)
    assert set(cluster.live) == ids and sorted(ri.inst.pool for ri in cluster.live.values()) == ["LL", "MM"]
    assert r.pool_changes == 1 and r.starts == r.stops == 0 and r.clock_changes == 2
    assert sum(ri.route.in_flight for ri in cluster.live.values()) == 4  # requests in flight go on
    cluster.route(4)
    (to_ll,) = (ri for ri in cluster.live.values() if ri.inst.pool == "LL")
    assert to_ll.counts[ll] == 1  # the LL request went to the instance the plan moved to the LL pool
    for second in range(120):
        cluster.tick(second)
    assert all(ri.route.in_flight == 0 for ri in cluster.live.values())
    assert all(ri.inst.engine.clock_mhz == low for ri in cluster.live.values())
    assert all(0 < t < 1 for t in r.ttft_s)


@pytest.fixture(scope="module")
def fixed_runs() -> tuple[FixedFleet, list[Result]]:
    fleet = FixedFleet.parse("1xTP8,2xTP4")
    s = SimSettings(fleet=fleet, solver_time_limit_s=0.5)
    policies = ["fixed-single-pool", "fixed-scale-freq", "fixed-wattgate", "wattgate"]
    return fleet, simulate(mixed(600, seed=3, rate=2.0), load_builtin(), policies, s).results


def test_the_fixed_fleet_never_changes_and_its_gpus_are_always_held(
    fixed_runs: tuple[FixedFleet, list[Result]],
) -> None:
    fleet, results = fixed_runs
    for r in results[:3]:
        assert set(r.instances) == {fleet.size}, r.name  # every second, every instance, no more
        assert r.starts == r.stops == r.reshards == r.wakes == r.reactive_adds == 0, r.name
        assert r.gpu_seconds == pytest.approx(fleet.gpus * len(r.power_w)), r.name
        assert r.unserved == r.unplaced == r.out_of_pool == 0, r.name  # every type had a pool to go to


def test_pools_and_clocks_save_energy_on_the_fixed_fleet_at_its_attainment(
    fixed_runs: tuple[FixedFleet, list[Result]],
) -> None:
    _, results = fixed_runs
    by = {r.name: r for r in results}
    base, ours = by["fixed-single-pool"], by["fixed-wattgate"]
    ok_base, ok_ours = (float(within_slo(r, SloTargets()).mean()) for r in (base, ours))
    assert ours.energy_j < 0.9 * base.energy_j  # modelled
    assert ok_base >= 0.99 and ok_ours >= 0.99
    assert len({ri for ri in ours.energy_by_pool_j if ri != "(no instance)"}) > 1  # it did split the fleet


def test_the_report_compares_the_fleet_today_wattgate_on_it_and_fully_managed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", str(trace(tmp_path / "t.csv", 120)), "--fixed-fleet", "2"]) == 0
    text = capsys.readouterr().out
    rows = [line.split()[0] for line in text.splitlines() if line.startswith(("fixed-", "wattgate "))]
    assert rows[:4] == ["fixed-single-pool", "fixed-scale-freq", "fixed-wattgate", "wattgate"]
    assert "modelled (serving model), not measured" in text
    assert "fixed fleet: 2 x TP8 on 16 GPUs (--fixed-fleet 2)" in text
    assert "'vs fleet' is against fixed-single-pool" in text and "SLO attainment per request type:" in text
    assert main(["simulate", str(trace(tmp_path / "t.csv", 120)), "--fixed-fleet", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["baseline"] == "fixed-single-pool" and doc["gpus"] == 16
    assert doc["fixed_fleet"] == {"spec": "2", "instances": "2 x TP8", "gpus": 16, "chosen": "--fixed-fleet 2"}
    by = {p["policy"]: p for p in doc["policies"]}
    assert by["fixed-single-pool"]["energy_vs_baseline"] == 0.0
    assert all("slo_attainment" in t for t in by["fixed-wattgate"]["per_type"].values())
    assert by["fixed-wattgate"]["reconfigurations"]["instance_starts"] == 0


def test_the_baseline_of_the_report_is_the_fixed_fleet_when_it_ran() -> None:
    a, b = Result("single-pool", 1, power_w=[100.0]), Result("fixed-single-pool", 1, power_w=[50.0])
    doc = document([a, b], SloTargets(), Prices(), {})
    assert doc["baseline"] == "fixed-single-pool"
    assert [p["energy_vs_baseline"] for p in doc["policies"]] == [1.0, 0.0]
    text = table(doc)
    assert "fixed-single-pool" in text and "vs fleet: energy against the fixed-fleet baseline" in text
    assert "vs 1-pool" not in text  # the column says which baseline, as plan and the demo do


def test_a_moved_instance_books_its_energy_to_each_pool_it_served() -> None:
    profile = load_builtin()
    fleet = FixedFleet.parse("2")
    r = Result("t", 10)
    cluster = Cluster(SERVING, Model(profile, SloTargets()), 16, Lifecycle(), Behaviour(), r, SimSettings().edges, [],
                      fleet.instances)  # fmt: skip
    top = profile.clocks(8, RequestType.parse("MM"))[-1]
    cluster.apply(((Group("MM", 8, top, 2, 1.0, 1.0),), {"MM": {"MM": 1.0}}), 0.0, first=True)
    for second in range(10):
        cluster.tick(second)
    at_move = {iid: ri.inst.energy_j for iid, ri in cluster.live.items()}
    plan = (Group("MM", 8, top, 1, 1.0, 1.0), Group("LL", 8, top, 1, 1.0, 1.0))
    cluster.apply((plan, {"MM": {"MM": 1.0}, "LL": {"LL": 1.0}}), 10.0, first=False)
    (moved,) = (ri.inst for ri in cluster.live.values() if ri.inst.pool == "LL")
    for second in range(10, 30):
        cluster.tick(second)
    cluster.finish(29)
    by_pool = r.energy_by_pool_j
    assert by_pool["LL"] == pytest.approx(moved.energy_j - at_move[moved.id])  # only what it drew in LL
    assert by_pool["MM"] + by_pool["LL"] == pytest.approx(sum(ri.inst.energy_j for ri in cluster.live.values()))
    assert by_pool["MM"] > by_pool["LL"] > 0
