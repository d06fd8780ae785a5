"""The attribution rule on one instance's ledger: proportional to work, idle booked apart, every joule once."""

from __future__ import annotations

import pytest

from wattgate.carbon import CarbonIntensity
from wattgate.gateway.energy import Booking, InstanceLedger, Work
from wattgate.planner.contract import IDLE_KEY


def ledger(*readings: tuple[float, float]) -> InstanceLedger:
    led = InstanceLedger("i1", max_open_s=60.0)
    led.model, led.pool = "m", "SS"
    for ts, j in readings:
        assert led.reading(ts, j, 300.0, "modelled")
    return led


def work(rid: str, start: float, prompt: int, key: str = "k") -> Work:
    return Work(rid, "m", key, "SS", start, prompt)


def close(w: Work, end: float, output: int, first: float | None = None) -> None:
    w.first, w.end, w.output_tokens = first, end, output
    w.status, w.done = "200", True


def by_request(bookings: list[Booking]) -> dict[str, float]:
    return {b.request_id or f"idle@{b.ts:g}": b.energy_j for b in bookings}


def test_interval_energy_is_split_by_tokens_and_idle_intervals_are_booked_to_the_pool() -> None:
    led = ledger((0.0, 1000.0))
    a, b = work("a", 0.0, 100), work("b", 0.0, 100)
    led.add(a)
    led.add(b)
    close(a, 1.0, 100)  # 200 tokens in (0, 1]
    close(b, 1.0, 500)  # 600 tokens in (0, 1]
    led.reading(1.0, 1800.0, 300.0, "modelled")
    led.reading(2.0, 2100.0, 300.0, "modelled")  # nobody worked in (1, 2]: idle
    got = led.settle(now=2.5)
    assert by_request(got) == {"a": pytest.approx(200.0), "b": pytest.approx(600.0), "idle@2": pytest.approx(300.0)}
    idle = next(x for x in got if not x.request_id)
    assert (idle.key, idle.pool, idle.model, idle.status, idle.requests, idle.tokens) == (
        IDLE_KEY,
        "SS",
        "m",
        "idle",
        0,
        0,
    )
    assert sum(x.energy_j for x in got) == pytest.approx(2100.0 - 1000.0)  # every joule once
    assert {x.source for x in got} == {"modelled"} and led.idle is False  # the last reading stays as the boundary


def test_streamed_work_puts_the_prompt_before_the_first_byte_and_the_output_after() -> None:
    led = ledger((0.0, 0.0))
    long_prompt = work("p", 0.0, 900)
    decoder = work("d", 0.0, 10)
    led.add(long_prompt)
    led.add(decoder)
    close(long_prompt, 2.0, 100, first=1.0)  # 900 prompt tokens in (0, 1], 100 output tokens in (1, 2]
    close(decoder, 2.0, 190, first=0.0)  # first byte at its start: all 200 tokens spread over [0, 2]
    led.reading(1.0, 1000.0, 1000.0, "modelled")
    led.reading(2.0, 2000.0, 1000.0, "modelled")
    got = by_request(led.settle(now=3.0))
    # (0, 1]: p 900, d 100 -> 900 J / 100 J; (1, 2]: p 100, d 100 -> 500 J each
    assert got == {"p": pytest.approx(1400.0), "d": pytest.approx(600.0)}


def test_an_interval_waits_for_the_requests_in_it_and_then_books_them_once() -> None:
    led = ledger((0.0, 0.0), (1.0, 100.0), (2.0, 200.0))
    early, late = work("early", 0.0, 10), work("late", 1.5, 10)
    led.add(early)
    led.add(late)
    close(early, 0.5, 0)
    assert by_request(led.settle(now=2.1)) == {"early": pytest.approx(100.0)}  # (0, 1] settled; (1, 2] waits
    assert led.settled_until == 1.0
    close(late, 2.5, 30)
    led.reading(3.0, 300.0, 100.0, "modelled")
    got = by_request(led.settle(now=3.1))
    assert got == {"late": pytest.approx(200.0)}  # it alone worked in (1, 2] and (2, 3]
    assert led.settle(now=3.2) == []  # nothing booked twice


def test_a_request_open_longer_than_max_open_s_no_longer_holds_the_books() -> None:
    led = ledger((0.0, 0.0), (1.0, 100.0))
    stuck, quick = work("stuck", 0.0, 10), work("quick", 0.5, 10)
    led.add(stuck)
    led.add(quick)
    close(quick, 1.0, 0)
    assert led.settle(now=30.0) == []  # stuck is open and the interval is young
    got = by_request(led.settle(now=61.5))  # the interval is older than max_open_s (60 s)
    # stuck's work so far: 10 prompt tokens over [0, 61.5]; quick's: 10 over [0.5, 1]
    share = 10 * 1 / 61.5
    assert got == {"quick": pytest.approx(100.0 * 10 / (10 + share))}
    close(stuck, 62.0, 5)
    led.reading(63.0, 200.0, 100.0, "modelled")
    got = by_request(led.settle(now=63.0))
    assert got["stuck"] == pytest.approx(100.0 * share / (10 + share) + 100.0)


def test_a_counter_that_goes_back_starts_a_new_series_and_counts_a_gap() -> None:
    led = ledger((0.0, 5000.0), (1.0, 5100.0))
    assert not led.reading(2.0, 10.0, 100.0, "modelled")  # the driver reloaded: counter from zero
    assert led.gaps == 1 and led.settled_until == 2.0
    assert not led.reading(3.0, 20.0, 100.0, "measured")  # another source is another series too
    assert led.gaps == 2 and led.source == "measured"
    assert led.reading(3.0, 25.0, 100.0, "measured")  # the same second again: ignored, not a break


def test_the_estimate_is_the_booking_when_the_load_holds_steady() -> None:
    led = ledger((0.0, 0.0))
    for t in range(1, 10):
        w = work(f"r{t}", t - 1.0, 50)
        led.add(w)
        close(w, float(t), 50)
        led.reading(float(t), 1000.0 * t, 1000.0, "modelled")
        led.settle(now=t + 0.01)
    last = work("last", 9.0, 50)
    led.add(last)
    close(last, 10.0, 50)
    estimate = led.estimate(last, now=10.0)
    led.reading(10.0, 10_000.0, 1000.0, "modelled")
    booked = by_request(led.settle(now=10.1))["last"]
    assert booked == pytest.approx(1000.0) and estimate == pytest.approx(booked)


def test_done_requests_of_a_silent_instance_are_booked_with_what_was_settled() -> None:
    led = ledger((0.0, 0.0), (1.0, 50.0))
    w, still = work("w", 0.5, 10), work("still", 0.5, 10)
    led.add(w)
    led.add(still)
    close(w, 3.0, 10)
    led.settle(now=1.1)
    assert led.drop_stale(now=20.0, stale_s=30.0) == []
    got = led.drop_stale(now=40.0, stale_s=30.0)
    # (0, 1]: w 4 tokens of work there, still (open until 40) 20 x 0.5/39.5: w's share of 50 J
    share = 50.0 * 4 / (4 + 10 * 0.5 / 39.5)
    assert [(b.request_id, b.energy_j) for b in got] == [("w", pytest.approx(share))]
    assert led.gaps == 1 and not led.idle
    close(still, 41.0, 5)  # it ends after its instance went silent: booked with what it had
    assert [(b.request_id, b.energy_j) for b in led.settle(now=42.0)] == [("still", pytest.approx(50.0 - share))]
    assert led.idle


def test_an_instance_that_stops_cleanly_is_not_a_gap() -> None:
    led = ledger((0.0, 0.0), (1.0, 50.0), (2.0, 100.0))
    w = work("w", 0.5, 10)
    led.add(w)
    close(w, 1.5, 10)
    assert len(led.settle(now=2.1)) == 1
    assert led.drop_stale(now=40.0, stale_s=30.0) == [] and led.gaps == 0 and led.idle


def test_the_estimate_counts_an_open_unstreamed_request_as_decoding_at_the_finishing_ones_pace() -> None:
    led = ledger((0.0, 0.0), (1.0, 1000.0))
    silent, streamed = work("silent", 0.0, 0), work("streamed", 0.0, 0)
    led.add(silent)
    led.add(streamed)
    close(streamed, 2.0, 100, first=0.0)  # 50 tokens/s; the silent one (non-streamed, still open) alike
    # the counter beyond the last reading grows at its power (300 W): 1300 J over [0, 2], split 100 : 100
    assert led.estimate(streamed, now=2.0) == pytest.approx(650.0)


def test_a_busy_instance_estimates_at_its_recent_joules_per_unit_of_work() -> None:
    led = ledger((0.0, 0.0))
    done = [work(f"d{n}", 0.0, 0) for n in range(70)]
    for w in done:
        led.add(w)
        close(w, 8.0, 80, first=0.0)  # 10 tokens/s each: 700 tokens a second
    for t in range(1, 9):  # eight busy seconds of 1000 J: 1000/700 J per token
        led.reading(float(t), 1000.0 * t, 1000.0, "modelled")
    assert len(led.settle(now=8.5)) == 70
    busy = [work(f"b{n}", 8.0, 0) for n in range(70)]  # more than EXACT_MAX on the instance
    for w in busy:
        led.add(w)
    close(busy[0], 9.0, 14, first=8.0)
    assert led.estimate(busy[0], now=9.0) == pytest.approx(14 * 1000 / 700)


def test_carbon_is_each_intervals_energy_at_the_intensity_of_its_hour() -> None:
    series = CarbonIntensity((100.0, 500.0))  # cycled from Monday 00:00 UTC: even unix hours 100, odd ones 500
    led = InstanceLedger("i1", max_open_s=60.0, carbon=series)
    led.model, led.pool = "m", "SS"
    h = 3600.0 * 1000  # an even unix hour: 100 g/kWh until h + 3600, then 500 g/kWh
    led.reading(h + 3598.0, 0.0, 300.0, "modelled")
    w = work("w", h + 3598.0, 10)
    led.add(w)
    close(w, h + 3602.0, 10)
    for k, t in enumerate((3599.0, 3600.0, 3601.0, 3602.0, 3603.0), 1):
        led.reading(h + t, 3.6e6 * k, 300.0, "modelled")  # 1 kWh a second
    got = {b.request_id or "idle": b for b in led.settle(now=h + 3604.0)}
    # (3598, 3599], (3599, 3600] at 100 g/kWh; (3600, 3601], (3601, 3602] at 500; the idle (3602, 3603] at 500
    assert got["w"].energy_j == pytest.approx(4 * 3.6e6) and got["w"].carbon_g == pytest.approx(2 * 100 + 2 * 500)
    assert got["idle"].carbon_g == pytest.approx(500.0)
    flat = ledger((0.0, 0.0), (1.0, 3.6e6))  # no intensity given: no carbon booked
    assert [b.carbon_g for b in flat.settle(now=2.0)] == [0.0]


def test_replicas_sharing_work_per_second_book_each_joule_once_whatever_readings_each_saw() -> None:
    """Two replicas' ledgers of one instance, one of which missed a reading: their requests' shares come from all
    replicas' work per second (the Redis totals, summed here), idle seconds go to the replica that claimed them."""
    a, b = ledger((0.0, 0.0), (1.5, 1500.0), (2.5, 2500.0), (4.0, 4000.0)), ledger((0.0, 0.0), (2.5, 2500.0))
    b.reading(4.0, 4000.0, 300.0, "modelled")
    wa, wb = work("a1", 0.2, 100), work("b1", 0.5, 100)
    a.add(wa)
    b.add(wb)
    close(wa, 1.2, 100)
    close(wb, 2.2, 300)
    assert a.publish(now=5.0) == 5 and b.publish(now=5.0) == 5  # nothing open: every second before now is in
    totals: dict[int, float] = {}
    for led in (a, b):
        for k, v in led.take_unsent().items():
            totals[k] = totals.get(k, 0.0) + v
    assert sorted(totals) == [0, 1, 2] and sum(totals.values()) == pytest.approx(600.0)  # prefill weight 1 here
    assert a.idle_seconds(5.0, totals) == [3] and b.idle_seconds(5.0, totals) == [3]
    got = a.settle_shared(5.0, 5.0, totals)  # a1 is booked; (2.5, 4] waits: second 3's claim is not known yet
    assert [x.request_id for x in got] == ["a1"] and a.settled_until == 2.5
    a.claimed({3: True})
    b.claimed({3: False})  # the other replica claimed it first
    got += a.settle_shared(5.0, 5.0, totals) + b.settle_shared(5.0, 5.0, totals)
    # seconds 0-2 are busy: 3000 J between the two requests by their work in each second; second 3 idle: a's
    # a1: 200 tokens over [0.2, 1.2] (160 in second 0, 40 in 1); b1: 400 over [0.5, 2.2] (0.5, 1 and 0.2 s of it)
    b_per_s = 400 / 1.7
    shares = {"a1": 1000 * 160 / (160 + 0.5 * b_per_s) + 1000 * 40 / (40 + b_per_s), "idle@4": 1000.0}
    shares["b1"] = 3000.0 - shares["a1"]
    assert by_request(got) == {k: pytest.approx(v) for k, v in shares.items()}
    assert sum(x.energy_j for x in got) == pytest.approx(4000.0)  # every joule once over both replicas
    assert not any(x.local for x in got) and a.settled_until == b.settled_until == 4.0
