"""The pure routing rule (``gateway.routing.choose``) at its edges: which instance, in which pool, and never
one that cannot take the request."""

from __future__ import annotations

from tests.gateway.test_plan_routing import _inst
from wattgate.classifier.api import Prediction
from wattgate.gateway.routing import (
    MIN_WEIGHT,
    Instance,
    InstanceSpec,
    choose,
    expected_output_tokens,
    plan_routes,
    plan_weights,
    pools_for,
    request_type,
)
from wattgate.profiles.classes import ClassEdges, RequestType

SM = RequestType.parse("SM")


def generic(id_: str, conc: int = 4) -> Instance:
    return Instance(InstanceSpec(id_, "http://x", frozenset({"m"}), None, conc, None, "static"))


def test_instances_without_a_pool_come_after_every_pool_specific_one() -> None:
    anyone, sl = generic("any"), _inst("sl", "SL")
    sl.outstanding_tokens, sl.in_flight = 5000, 3  # far busier than the pool-less instance
    # SM's own pool has nobody; SL (its spill chain's next pool) does: SL wins, busy as it is
    assert choose([anyone, sl], "m", SM, 0.0) == (sl, "SL")
    sl.in_flight = sl.spec.max_concurrency  # SL full: now the pool-less instance, serving the type itself
    assert choose([anyone, sl], "m", SM, 0.0) == (anyone, "SM")
    assert choose([anyone], "m", SM, 0.0) == (anyone, "SM")


def test_embeddings_go_to_the_least_loaded_instance_of_any_pool() -> None:
    a, b, c = _inst("a", "SS"), _inst("b", "LL"), generic("c")
    a.outstanding_tokens, b.outstanding_tokens, c.outstanding_tokens = 30, 10, 20
    assert choose([a, b, c], "m", None, 0.0) == (b, "LL")
    b.outstanding_tokens = 40
    assert choose([a, b, c], "m", None, 0.0) == (c, "any")  # a pool-less one serves as "any"
    c.outstanding_tokens = 30
    c.in_flight = 1  # same tokens as a, more requests: a
    assert choose([a, b, c], "m", None, 0.0) == (a, "SS")


def test_never_an_instance_at_its_bound_ejected_unready_excluded_or_of_another_model() -> None:
    i = _inst("i", "SM", conc=2)
    i.in_flight = 1
    assert choose([i], "m", SM, 0.0) == (i, "SM")  # one below its bound: still takes one
    i.in_flight = 2
    assert choose([i], "m", SM, 0.0) is None
    i.in_flight = 0
    assert choose([i], "other-model", SM, 0.0) is None
    assert choose([i], "m", SM, 0.0, exclude={"i"}) is None
    i.ejected_until = 10.0
    assert choose([i], "m", SM, 9.99) is None
    assert choose([i], "m", SM, 10.0) == (i, "SM")  # the cooldown is over at its end
    i.healthy = False
    assert choose([i], "m", SM, 10.0) is None
    unready = Instance(InstanceSpec("u", "http://x", frozenset({"m"}), "SM", 4, None, "registry", ready=False))
    assert choose([unready], "m", SM, 0.0) is None


def test_least_work_per_unit_of_weight_with_request_count_breaking_ties() -> None:
    a, b = _inst("a", "SM", conc=64), _inst("b", "SM", conc=64)
    a.outstanding_tokens, b.outstanding_tokens = 100, 100
    a.in_flight, b.in_flight = 2, 1
    assert choose([a, b], "m", SM, 0.0) == (b, "SM")
    a.weight = 4.0  # 100/4 tokens per unit of weight against 100
    assert choose([a, b], "m", SM, 0.0) == (a, "SM")


def test_a_type_the_plan_lists_tries_its_planned_pools_then_its_spill_chain() -> None:
    routes = plan_routes({"LL": ["SM"], "ML": ["SM"]})
    assert routes["SM"] == ("LL", "ML", "SM", "SL", "MM", "LM")
    assert routes["SM"][2:] == tuple(p for p in pools_for(SM) if p not in ("LL", "ML"))
    assert set(routes) == {"SM"}  # types the plan does not name keep their spill chain alone
    ll = _inst("ll", "LL")
    assert choose([ll], "m", SM, 0.0, routes=routes) == (ll, "LL")
    ml = _inst("ml", "ML")
    assert choose([ll, ml], "m", SM, 0.0, routes=routes) == (ll, "LL")  # the plan's order, not the chain's
    assert choose([ll, ml], "m", SM, 0.0) == (ml, "ML")  # without the plan: the spill chain's order
    assert choose([_inst("ss", "SS")], "m", SM, 0.0, routes=routes) is None  # never a shorter output class


def test_expected_output_tokens_is_the_probability_weighted_class_midpoints() -> None:
    edges = ClassEdges()  # output S <= 94, M <= 371
    pred = Prediction(100, (0.5, 0.25, 0.25))
    assert expected_output_tokens(pred, edges, None) == int(0.5 * 47 + 0.25 * 232.5 + 0.25 * 742)
    assert expected_output_tokens(pred, edges, 50) == 50  # capped by max_tokens
    assert expected_output_tokens(Prediction(1, (1.0, 0.0, 0.0)), ClassEdges(1, 2, 1, 2), None) == 1  # at least 1
    assert request_type(Prediction(409, (0.0, 0.0, 1.0)), edges).name == "ML"
    assert request_type(Prediction(408, (1.0, 0.0, 0.0)), edges).name == "SS"


def test_plan_weights_floor_and_equal_weights() -> None:
    w = plan_weights([("a", "SS", 3.0), ("b", "SS", 1.0), ("c", "SS", 0.0), ("d", "LL", -1.0)])
    mean = 4.0 / 3
    assert w == {"a": 3.0 / mean, "b": 1.0 / mean, "c": MIN_WEIGHT, "d": 1.0}
