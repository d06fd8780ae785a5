from __future__ import annotations

import pytest

from wattgate.profiles.classes import (
    POOL_NAMES,
    ClassEdges,
    LengthClass,
    ProfilesError,
    RequestType,
    SloTargets,
    spill_chain,
)


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [(0, "S"), (408, "S"), (409, "M"), (1109, "M"), (1110, "L"), (14050, "L")],
)
def test_default_input_edges(tokens: int, expected: str) -> None:
    assert ClassEdges().input_class(tokens) == LengthClass(expected)


@pytest.mark.parametrize(("tokens", "expected"), [(94, "S"), (95, "M"), (371, "M"), (372, "L")])
def test_default_output_edges(tokens: int, expected: str) -> None:
    assert ClassEdges().output_class(tokens) == LengthClass(expected)


def test_edges_validated() -> None:
    with pytest.raises(ProfilesError, match="short_max < medium_max"):
        ClassEdges(input_short_max=500, input_medium_max=400)


def test_pool_names_and_parse() -> None:
    assert POOL_NAMES == ("SS", "SM", "SL", "MS", "MM", "ML", "LS", "LM", "LL")
    assert RequestType.parse(" ml ").name == "ML"
    with pytest.raises(ProfilesError, match="unknown request type"):
        RequestType.parse("XS")


def test_spill_chain_goes_to_longer_output_then_longer_input() -> None:
    names = [t.name for t in spill_chain(RequestType.parse("SS"))]
    assert names == ["SS", "SM", "SL", "MS", "MM", "ML", "LS", "LM", "LL"]
    assert [t.name for t in spill_chain(RequestType.parse("ML"))] == ["ML", "LL"]
    assert [t.name for t in spill_chain(RequestType.parse("LL"))] == ["LL"]


def test_slo_defaults_follow_prototype() -> None:
    slo = SloTargets()
    assert slo.ttft_for(RequestType.parse("SL")) == 0.25
    assert slo.ttft_for(RequestType.parse("LS")) == 1.5
    with pytest.raises(ProfilesError):
        SloTargets(tbt_p99_s=0)
