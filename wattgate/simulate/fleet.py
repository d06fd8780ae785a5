"""A fixed fleet for the replay (``--fixed-fleet``): instances wattgate may not start or stop, laid out on nodes.

``N`` is N TP8 instances; ``4xTP8,8xTP4`` lists counts per TP. Instances are packed onto 8-GPU nodes,
the widest first, each on one node (a TP group never spans nodes); the cluster is the nodes they use,
so a node the fleet fills only in part keeps its other GPUs empty (they draw the empty GPU's power in
every policy replayed on it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from wattgate.planner.model import FixedInstance
from wattgate.simulate.trace import SimulateError

GPUS_PER_NODE = 8
_TPS = (1, 2, 4, 8)
_PART = re.compile(r"(\d+)\s*[xX]\s*TP(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class FixedFleet:
    """Instances per TP, as given (``spec``) and laid out on nodes (``instances``)."""

    spec: str
    counts: tuple[tuple[int, int], ...]  # (TP, instances), widest TP first

    @classmethod
    def parse(cls, spec: str) -> FixedFleet:
        """``N`` or ``CxTPn[,CxTPn...]`` with C >= 1 and n in 1, 2, 4, 8; raises ``SimulateError`` otherwise."""
        text = spec.strip()
        want = f"--fixed-fleet: expected N (N TP8 instances) or a list like 4xTP8,8xTP4, got {spec!r}"
        if text.isdigit():
            n = int(text)
            if n < 1:
                raise SimulateError(f"--fixed-fleet: the fleet needs at least one instance, got {spec!r}")
            return cls(spec, ((8, n),))
        counts: dict[int, int] = {}
        for part in text.split(","):
            m = _PART.fullmatch(part.strip())
            if m is None:
                raise SimulateError(want)
            count, tp = int(m.group(1)), int(m.group(2))
            if tp not in _TPS:
                raise SimulateError(f"--fixed-fleet: TP must be one of {', '.join(map(str, _TPS))}, got TP{tp}")
            if count < 1:
                raise SimulateError(f"--fixed-fleet: each count must be >= 1, got {part.strip()!r}")
            counts[tp] = counts.get(tp, 0) + count
        return cls(spec, tuple(sorted(counts.items(), reverse=True)))

    @property
    def size(self) -> int:
        return sum(n for _, n in self.counts)

    @property
    def instances(self) -> tuple[FixedInstance, ...]:
        """Each instance on the first node with room for its TP (widest first), ids ``fixed-<node>-<gpu>``."""
        free: list[int] = []  # free GPUs per node, taken from the low end
        out: list[FixedInstance] = []
        for tp, n in self.counts:
            for _ in range(n):
                node = next((i for i, f in enumerate(free) if f >= tp), None)
                if node is None:
                    free.append(GPUS_PER_NODE)
                    node = len(free) - 1
                first = GPUS_PER_NODE - free[node]
                free[node] -= tp
                gpus = tuple(range(first, first + tp))
                out.append(FixedInstance(f"fixed-{node}-{first}", f"node-{node}", gpus, tp))
        return tuple(out)

    @property
    def gpus(self) -> int:
        """GPUs of the nodes the fleet occupies (whole nodes: the cluster replayed)."""
        nodes = {f.node for f in self.instances}
        return GPUS_PER_NODE * len(nodes)

    def describe(self) -> str:
        return ", ".join(f"{n} x TP{tp}" for tp, n in self.counts)

    def to_json(self) -> dict[str, object]:
        """The report's description of the fleet."""
        return {
            "spec": self.spec,
            "instances": self.describe(),
            "gpus": self.gpus,
            "chosen": f"--fixed-fleet {self.spec}",
        }
