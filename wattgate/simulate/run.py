"""One simulation: classify the workload (through the confusion matrix), then replay it under each policy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from wattgate.planner.forecast import ForecastSettings
from wattgate.planner.model import DEFAULT_HEADROOM, SolverSettings
from wattgate.profiles.classes import POOL_NAMES, ClassEdges, RequestType, SloTargets
from wattgate.profiles.table import Profile
from wattgate.simulate.confusion import Confusion, Sampler
from wattgate.simulate.engine import Arrival, Result, replay
from wattgate.simulate.model import TYPE_INDEX, Costs, Model
from wattgate.simulate.policies import POLICIES, PlanEnv, Workload, planner_for
from wattgate.simulate.trace import Request, SimulateError


@dataclass(frozen=True)
class SimSettings:
    gpus: int = 256
    epoch_s: float = 300.0
    seed: int = 0
    confusion: Confusion = field(default_factory=Confusion)
    costs: Costs = field(default_factory=Costs)
    slo: SloTargets = field(default_factory=SloTargets)
    edges: ClassEdges = field(default_factory=ClassEdges)
    solver_time_limit_s: float = 1.0
    headroom: float = DEFAULT_HEADROOM  # share of an instance's SLO capacity the planner and clock policy may use
    plan_routing: bool = True  # the gateway routes by the plan (Plan.serves); False: by the spill chain alone

    def __post_init__(self) -> None:
        if self.gpus < 8 or not self.epoch_s >= 60:
            raise SimulateError("--gpus must be >= 8 and --epoch-s >= 60")
        if not 0 < self.headroom <= 1:
            raise SimulateError("--headroom must be in (0, 1]")


def classify(requests: Sequence[Request], s: SimSettings) -> list[Arrival]:
    """True type from the token counts; predicted type: same input class (the gateway counts input
    tokens), output class drawn from the confusion matrix row of the true output class."""
    sampler = Sampler(s.confusion, s.seed)
    out: list[Arrival] = []
    for r in requests:
        true = s.edges.request_type(r.input_tokens, r.output_tokens)
        pred = RequestType(true.input, sampler.predict(true.output))
        out.append(Arrival(r.arrival_s, TYPE_INDEX[true.name], TYPE_INDEX[pred.name], r.input_tokens, r.output_tokens))
    return out


def per_minute(arrivals: Sequence[Arrival]) -> Workload:
    minutes = math.ceil((arrivals[-1].arrival_s + 1e-9) / 60) + 1 if arrivals else 1
    true = {p: [0.0] * minutes for p in POOL_NAMES}
    pred = {p: [0.0] * minutes for p in POOL_NAMES}
    for a in arrivals:
        k = int(a.arrival_s // 60)
        true[POOL_NAMES[a.true_type]][k] += 1
        pred[POOL_NAMES[a.pred_type]][k] += 1
    return Workload(true, pred)


def simulate(
    requests: Sequence[Request], profile: Profile, policies: Sequence[str], s: SimSettings | None = None
) -> list[Result]:
    s = s or SimSettings()
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise SimulateError(f"unknown policy {', '.join(unknown)}; known: {', '.join(POLICIES)}")
    if not requests:
        raise SimulateError("the workload has no requests")
    model = Model(profile, s.slo, s.headroom)
    arrivals = classify(requests, s)
    work = per_minute(arrivals)
    solver = SolverSettings(slo=s.slo, time_limit_s=s.solver_time_limit_s, period_s=s.epoch_s, headroom=s.headroom)
    env = PlanEnv(model, s.gpus, s.epoch_s, ForecastSettings(), solver)
    results = []
    for name in policies:
        spec = POLICIES[name]
        seen = arrivals
        if spec.oracle:  # perfect output lengths: routed by the true type
            seen = [Arrival(a.arrival_s, a.true_type, a.true_type, a.input_tokens, a.output_tokens) for a in arrivals]
        plan = planner_for(spec, env, work)
        epoch = s.epoch_s if spec.dynamic else None
        results.append(
            replay(
                name,
                seen,
                model=model,
                gpus=s.gpus,
                costs=s.costs,
                clock_loop=spec.clock_loop,
                epoch_s=epoch,
                plan=plan,
                plan_routing=s.plan_routing,
            )
        )
    return results
