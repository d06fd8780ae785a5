"""Per-request energy attribution against the serving model's own split: the gateway's token rule vs equal split.

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/energy_attribution.py [--duration-s 300] [--rates 1,2,4] [--seeds 2]``.

One emulated engine (the serving model: Llama-3.1-70B TP4 at 1980 MHz, vLLM V1 calibration, everything
modelled) serves a Poisson stream of requests with mixed prompt and output lengths. *Truth*: each engine
step's energy goes to the requests in it in proportion to their marginal cost (the step's energy less the
energy of the same step without that request; the KV reads of a decode, the attention of a prefill chunk
included); energy between steps is idle. The rules then see only what a gateway sees (each request's
arrival, first token, end and token counts) and the instance's energy counter once a second:

- ``tokens (prefill xW)``: the gateway's rule (``wattgate.gateway.energy.InstanceLedger``, the code the
  gateway runs), a prompt token weighing W output tokens (the gateway's default: 0.1);
- ``equal``: each interval's energy split equally among the requests running in it (by time present).

Every rule books idle intervals apart, so each is compared on its share: each request's fraction of the
energy booked to requests, against its fraction under the truth. Then the estimate each response would
carry (the ledger fed in time order, asked as each request ends) against the energy later booked to it.
Prints tables and one JSON line (all modelled).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
from dataclasses import dataclass, field

from wattgate.gateway.energy import InstanceLedger, Work
from wattgate.servingmodel.calibration import ServingModel
from wattgate.servingmodel.engine import Engine, Finished, Phase, Request, _Decision
from wattgate.servingmodel.steps import StepTime

PROMPTS = (64, 256, 1024, 4096)
WEIGHTS = (1.0, 0.25, 0.1, 0.05)
DEFAULT_WEIGHT = 0.1  # the gateway's energy_prefill_weight
OUTPUTS = (16, 64, 256, 512)


@dataclass
class Truth:
    """Energy per request id under the marginal-cost split, and the idle energy between steps."""

    per_request: dict[str, float] = field(default_factory=dict)
    idle_j: float = 0.0

    def add(self, shares: list[tuple[str, float]], energy_j: float) -> None:
        total = sum(m for _, m in shares)
        for rid, m in shares:
            self.per_request[rid] = self.per_request.get(rid, 0.0) + energy_j * m / total


class MeteredEngine(Engine):
    """The serving-model engine, with each committed step's energy split among its requests (``Truth``)."""

    truth: Truth

    def _energy(self, t: StepTime, clock: int) -> float:
        return self.power.step_energy_j(t, clock, self.config.tp)

    def _apply(self, d: _Decision) -> None:
        assert d.time is not None
        gone = set(map(id, d.preempt))
        decoding = [r for r in self._decoding.values() if id(r) not in gone] if d.decodes else []
        kv = self._kv_read() - sum(self._kv_of(r) for r in d.preempt if r.phase is Phase.DECODE)
        prefill = [(r, cached, chunk) for r, cached, chunk in d.prefill]
        f = self._factors(d.clock_mhz)
        full = self._energy(d.time, d.clock_mhz)

        def without(skip_prefill: int | None, skip_decode: Request | None) -> float:
            chunks = tuple((c, n) for k, (_, c, n) in enumerate(prefill) if k != skip_prefill)
            completing = sum(1 for k, (r, c, n) in enumerate(prefill) if k != skip_prefill and c + n >= r.target)
            decodes = len(decoding) - (skip_decode is not None)
            kv_left = kv - (self._kv_of(skip_decode) if skip_decode is not None else 0)
            if not chunks and not decodes:
                return 0.0
            t = self.cost.step(
                decodes=decodes, kv_tokens=kv_left, prefill=chunks, sampled=decodes + completing, factors=f
            )
            return self._energy(t, d.clock_mhz)

        shares = [(r.id, full - without(k, None)) for k, (r, _, _) in enumerate(prefill)]
        shares += [(r.id, full - without(None, r)) for r in decoding]
        self.truth.add([(rid, max(m, 1e-12)) for rid, m in shares], full)
        super()._apply(d)

    def _account(self, t: StepTime, clock: int, steps: int) -> None:
        super()._account(t, clock, steps)
        if self._run is not None:  # a closed-form run of decode steps (``_run_decodes``)
            n, kv, k = self._run
            f = self._factors(clock)
            full = self._energy(t, clock)
            shares = []
            for r in self._decoding.values():
                rest = self.cost.decode_run(n - 1, kv - self._kv_of(r), k, f) if n > 1 else None
                shares.append((r.id, max(full - (self._energy(rest, clock) if rest else 0.0), 1e-12)))
            self.truth.add(shares, full)
            self._run = None

    _run: tuple[int, int, int] | None = None

    def _run_decodes(self, s: float, until_s: float, clock: int):  # type: ignore[no-untyped-def]
        n0 = len(self._decoding)
        f = self._factors(clock)
        k = self._decode_limit(s, clock)
        if until_s != float("inf"):
            k = min(k, self.cost.decode_steps_within(n0, self._kv_read(), until_s - s, f))
        if k >= 1:
            self._run = (n0, self._kv_read(), k)
        return super()._run_decodes(s, until_s, clock)

    def _idle(self, dt: float, clock: int) -> None:
        before = self.totals.energy_j
        super()._idle(dt, clock)
        self.truth.idle_j += self.totals.energy_j - before


def run(seed: int, duration_s: float, rate_rps: float) -> dict[str, list[float]]:
    model = ServingModel()
    base = model.engine(4)
    eng = MeteredEngine(base.cost, base.law, base.power, base.config, clock_mhz=base.clock_mhz,
                        request_latency_s=base.request_latency_s)  # fmt: skip
    eng.truth = Truth()
    rng = random.Random(seed)
    t, arrivals = 0.0, []
    while True:
        t += rng.expovariate(rate_rps)
        if t >= duration_s:
            break
        arrivals.append((t, rng.choice(PROMPTS), rng.choice(OUTPUTS)))
    for n, (at, prompt, output) in enumerate(arrivals):
        eng.submit(f"r{n}", prompt, output, at)
    ledgers = {w: InstanceLedger("bench", max_open_s=1e9, prefill_weight=w) for w in WEIGHTS}
    for ledger in ledgers.values():
        ledger.reading(0.0, 0.0, 0.0, "modelled")
    readings = [(0.0, 0.0)]
    finished = []
    second = 0
    while second < duration_s + 600 and (second < duration_s or not eng.idle):
        second += 1
        eng.advance(float(second))
        e = eng.energy_j_at(float(second))
        readings.append((float(second), e))
        for ledger in ledgers.values():
            ledger.reading(float(second), e, 0.0, "modelled")
        finished += eng.pop_finished()
    rules: dict[str, dict[str, float]] = {}
    for weight, ledger in ledgers.items():
        works = []
        for f in finished:
            first = f.arrival_s + f.ttft_s - eng.request_latency_s
            w = Work(f.id, "m", "k", "p", f.arrival_s, f.prompt, first=first, end=f.finish_s, output_tokens=f.output)
            w.status, w.done = "200", True
            works.append(w)
            ledger.add(w)
        rules[f"tokens (prefill x{weight:g})"] = {b.request_id: b.energy_j for b in ledger.settle(1e12) if b.request_id}
    rules["equal"] = equal_split(readings, works)
    firsts = {f.id: f.arrival_s + f.ttft_s - eng.request_latency_s for f in finished}
    estimates = online_estimates(readings, finished, firsts)
    truth = eng.truth.per_request
    ids = [w.request_id for w in works if w.request_id in truth]
    out: dict[str, list[float]] = {}
    for name, got in rules.items():
        t_sum, g_sum = sum(truth[i] for i in ids), sum(got.get(i, 0.0) for i in ids)
        out[name] = [abs(got.get(i, 0.0) / g_sum - truth[i] / t_sum) / (truth[i] / t_sum) for i in ids]
    booked = rules[f"tokens (prefill x{DEFAULT_WEIGHT:g})"]
    out["estimate / booking"] = [estimates[i] / booked[i] for i in ids if booked.get(i)]
    return out


def online_estimates(
    readings: list[tuple[float, float]], finished: list[Finished], firsts: dict[str, float]
) -> dict[str, float]:
    """The estimate each response would carry: the gateway's ledger fed in time order (requests start, stream
    their first token and end between the once-a-second readings), asked when each request ends."""
    ledger = InstanceLedger("online", max_open_s=1e9, prefill_weight=DEFAULT_WEIGHT)
    events: list[tuple[float, int, Finished]] = []
    for f in finished:
        events += [(f.arrival_s, 0, f), (firsts[f.id], 1, f), (f.finish_s, 2, f)]
    events.sort(key=lambda e: (e[0], e[1]))
    open_: dict[str, Work] = {}
    finished_by_id = {f.id: f for f in finished}
    out: dict[str, float] = {}
    k = 0
    last = (0.0, 0.0)
    for ts, energy in readings:
        power = (energy - last[1]) / (ts - last[0]) if ts > last[0] else 0.0  # what the agent reads: the last second's
        last = (ts, energy)
        while k < len(events) and events[k][0] <= ts:
            at, kind, f = events[k]
            k += 1
            if kind == 0:
                open_[f.id] = Work(f.id, "m", "k", "p", at, f.prompt)
                ledger.add(open_[f.id])
            elif kind == 1:
                open_[f.id].first = at
            else:
                for o in open_.values():  # what the gateway has seen of the others' streams by now
                    if o.first is not None and o.first < at:
                        g = finished_by_id[o.request_id]
                        o.output_tokens = int(g.output * (at - o.first) / max(g.finish_s - o.first, 1e-9))
                w = open_.pop(f.id)
                w.end, w.output_tokens = at, f.output
                out[f.id] = ledger.estimate(w, at)
                w.status, w.done = "200", True
        ledger.reading(ts, energy, power, "modelled")
        ledger.settle(ts)
    return out


def equal_split(readings: list[tuple[float, float]], works: list[Work]) -> dict[str, float]:
    out: dict[str, float] = {}
    for (a, ea), (b, eb) in itertools.pairwise(readings):
        present = [(w, min(b, w.end or b) - max(a, w.start)) for w in works if w.start < b and (w.end or b) > a]
        present = [(w, p) for w, p in present if p > 0]
        total = sum(p for _, p in present)
        for w, p in present:
            out[w.request_id] = out.get(w.request_id, 0.0) + (eb - ea) * p / total
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration-s", type=float, default=300.0, help="simulated seconds of arrivals (default 300)")
    p.add_argument("--rates", default="1,2,4", help="requests per simulated second, one run each (default 1,2,4)")
    p.add_argument("--seeds", type=int, default=2)
    a = p.parse_args()
    result: dict[str, dict[str, dict[str, float]]] = {}
    print("per-request share of the energy booked to requests: relative error against the serving model's split")
    print("(modelled; mean / p90 over requests; Llama-3.1-70B TP4 at 1980 MHz, vLLM V1 calibration)")
    print(f"{'rule':22}" + "".join(f"{r + ' req/s':>18}" for r in a.rates.split(",")))
    for rate in a.rates.split(","):
        errs: dict[str, list[float]] = {}
        for seed in range(a.seeds):
            for name, e in run(seed, a.duration_s, float(rate)).items():
                errs.setdefault(name, []).extend(e)
        for name, e in errs.items():
            q = sorted(e)
            result.setdefault(name, {})[rate] = {
                "mean": statistics.fmean(e),
                "p10": q[int(len(q) * 0.1)],
                "p50": q[len(q) // 2],
                "p90": q[int(len(q) * 0.9)],
                "n": len(e),
            }
    ratios = result.pop("estimate / booking")
    for name, by_rate in result.items():
        print(f"{name:22}" + "".join(f"{r['mean']:>9.1%} /{r['p90']:>6.0%}" for r in by_rate.values()))
    print("\nthe estimate a response carries / the energy later booked to it (default rule; p10 / p50 / p90)")
    cells = ["{:.2f} / {:.2f} / {:.2f}".format(r["p10"], r["p50"], r["p90"]) for r in ratios.values()]
    print(" " * 22 + "".join(f"{c:>20}" for c in cells))
    result["estimate / booking"] = ratios
    print(json.dumps({"bench": "energy_attribution", "source": "modelled", "rules": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
