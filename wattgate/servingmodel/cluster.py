"""A GPU cluster of engine instances: which GPUs each instance holds, its lifecycle, and every joule (modelled).

Honest accounting (DESIGN.md): every GPU draws power all the time. A GPU that holds no instance
draws ``EMPTY_GPU_W``; one held by a *starting* instance draws the engine's idle power at the top
clock for the whole start (loading weights, compiling, capturing CUDA graphs: the GPUs are busy with
memory traffic, not compute); a *ready* or *draining* instance's GPUs draw what its engine model
says, steps and idle time between them; a *stopping* one its idle power until the process is gone.
GPUs are freed only when an instance has stopped: a new instance can never be placed on GPUs that
another still holds.

Lifecycle figures (``Lifecycle``) for a 70B-class model under vLLM V1, from vLLM's own
measurements in issue vllm-project/vllm#19824 (Llama-70B on TP8, June 2025): ~10 s to load the
weights from a hot page cache, ~15 s Dynamo bytecode transform, ~70 s torch.compile cold (~8 s
when its cache is warm, as vllm-project/vllm#20264 logs), ~60 s CUDA graph capture, and ~60 s of a
P2P access check that ``VLLM_SKIP_P2P_CHECK=1`` skips. A managed start (weights cached, compile cache
warm, P2P check skipped) is therefore ~95 s; stopping a drained instance ~5 s (process teardown).

**Standby** (vLLM's sleep mode, level 1: the weights move to CPU memory, the KV cache is dropped, the
process and its CUDA graphs stay): a drained instance can sleep instead of stopping. It keeps its
GPUs, which then draw the engine's idle power at the lowest clock (a process with a CUDA context keeps
a GPU out of its deepest idle state: an upper estimate, not measured), and wakes in the time it takes
to copy its weights back over PCIe (~25 GB/s per GPU, each GPU on its own link) plus a second; vLLM's
sleep-mode announcement (blog.vllm.ai, 2025-10-26) reports wake-ups 18-200x faster than a full
reload. For a 70B model that is ~4 s on TP2 and ~2 s on TP8, against ~95 s for a start.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from wattgate.servingmodel.calibration import ServingModel
from wattgate.servingmodel.engine import Engine, Finished
from wattgate.servingmodel.errors import ServingModelError
from wattgate.servingmodel.power import EMPTY_GPU_W


@dataclass(frozen=True)
class Lifecycle:
    """Seconds an instance takes to start and to stop (see the module docstring for the sources)."""

    start_s: float = 95.0
    stop_s: float = 5.0
    host_link_bytes_per_s: float = 25e9  # weights back from CPU memory when waking (PCIe Gen5 x16, per GPU)
    wake_fixed_s: float = 1.0

    def __post_init__(self) -> None:
        if self.start_s < 0 or self.stop_s < 0 or self.wake_fixed_s < 0 or not self.host_link_bytes_per_s > 0:
            raise ServingModelError("start, stop and wake times must be >= 0 s, the host link bandwidth > 0")

    def wake_s(self, weights_bytes: float, tp: int) -> float:
        return weights_bytes / tp / self.host_link_bytes_per_s + self.wake_fixed_s


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"  # takes no new requests; stops (or sleeps) when its last one finishes
    SLEEPING = "sleeping"  # standby: holds its GPUs, weights in CPU memory
    WAKING = "waking"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(eq=False)
class Instance:
    """One engine instance on ``tp`` GPUs of one node."""

    id: str
    pool: str
    tp: int
    node: int
    gpus: tuple[int, ...]
    engine: Engine
    state: State
    ready_at: float
    stop_at: float = float("inf")  # when a STOPPING instance is gone
    energy_j: float = 0.0  # everything its GPUs drew while it held them
    mark_s: float = 0.0  # energy is integrated up to here
    drain_when_ready: bool = False
    sleep_when_drained: bool = False
    engine_j: float = field(default=0.0, repr=False)  # the engine's counter at mark_s

    @property
    def accepting(self) -> bool:
        return self.state is State.READY


class GpuCluster:
    """Nodes of ``gpus_per_node`` GPUs and the instances on them (see the module docstring)."""

    def __init__(
        self,
        model: ServingModel,
        nodes: int,
        *,
        gpus_per_node: int = 8,
        lifecycle: Lifecycle | None = None,
        empty_gpu_w: float = EMPTY_GPU_W,
        engine_overrides: dict[str, object] | None = None,
    ) -> None:
        if nodes < 1 or gpus_per_node < 1:
            raise ServingModelError("a cluster needs at least one node with at least one GPU")
        self.model = model
        self.gpus_per_node = gpus_per_node
        self.lifecycle = lifecycle or Lifecycle()
        self.empty_gpu_w = empty_gpu_w
        self.engine_overrides = dict(engine_overrides or {})
        self.free: list[set[int]] = [set(range(gpus_per_node)) for _ in range(nodes)]
        self.instances: dict[str, Instance] = {}
        self.time_s = 0.0
        self.energy_j = 0.0
        self.empty_gpu_j = 0.0  # of which GPUs that held nothing
        self.held_gpu_s = 0.0  # GPU-seconds held by instances (any state)
        self._start_w = model.calibration.power.idle_gpu_w(model.max_clock_mhz)
        self._sleep_w = model.calibration.power.idle_gpu_w(0)  # the idle power at the lowest clock

    @property
    def gpus(self) -> int:
        return len(self.free) * self.gpus_per_node

    def free_gpus(self) -> int:
        return sum(len(f) for f in self.free)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(
        self,
        iid: str,
        *,
        pool: str,
        tp: int,
        node: int,
        gpus: Iterable[int],
        clock_mhz: int,
        now_s: float,
        instant: bool = False,
    ) -> Instance:
        """Start an instance on free GPUs; ``instant`` makes it ready at once (a cluster already running)."""
        held = tuple(sorted(gpus))
        if iid in self.instances:
            raise ServingModelError(f"duplicate instance id {iid!r}")
        if len(held) != tp or not set(held) <= self.free[node]:
            raise ServingModelError(f"GPUs {held} of node {node} are not all free for {iid}")
        self.free[node] -= set(held)
        ready_at = now_s if instant else now_s + self.lifecycle.start_s
        engine = self.model.engine(tp, clock_mhz=clock_mhz, start_s=ready_at, **self.engine_overrides)
        state = State.READY if instant else State.STARTING
        inst = Instance(
            iid, pool, tp, node, held, engine, state, ready_at, mark_s=now_s, engine_j=engine.totals.energy_j
        )
        self.instances[iid] = inst
        return inst

    def drain(self, iid: str, now_s: float, *, then_sleep: bool = False) -> None:
        """Take no new requests; stop (or with ``then_sleep`` go to standby) once the last one has finished
        (at once if it has none). A starting instance with requests waiting for it starts, serves them,
        then stops. A sleeping one stops."""
        inst = self.instances[iid]
        inst.sleep_when_drained = then_sleep
        if inst.state in (State.STARTING, State.WAKING) and inst.engine.idle:  # nothing to drain: abandon it
            self._integrate(inst, now_s)
            self._stopping(inst, now_s)
        elif inst.state in (State.STARTING, State.WAKING):
            inst.drain_when_ready = True
        elif inst.state is State.READY:
            inst.state = State.DRAINING
        elif inst.state is State.SLEEPING:
            self._integrate(inst, now_s)
            self._stopping(inst, now_s)

    def wake(self, iid: str, pool: str, clock_mhz: int, now_s: float) -> Instance:
        """A sleeping instance serves ``pool`` again once its weights are back on the GPUs (a fresh engine:
        its KV cache was dropped)."""
        inst = self.instances[iid]
        if inst.state is not State.SLEEPING:
            raise ServingModelError(f"{iid} is {inst.state.value}, not sleeping")
        self._integrate(inst, now_s)
        ready_at = now_s + self.lifecycle.wake_s(self.model.arch.weights_bytes(), inst.tp)
        inst.engine = self.model.engine(inst.tp, clock_mhz=clock_mhz, start_s=ready_at, **self.engine_overrides)
        inst.engine_j = inst.engine.totals.energy_j
        inst.pool, inst.state, inst.ready_at = pool, State.WAKING, ready_at
        inst.drain_when_ready = inst.sleep_when_drained = False
        return inst

    def _stopping(self, inst: Instance, now_s: float) -> None:
        inst.state = State.STOPPING
        inst.stop_at = now_s + self.lifecycle.stop_s

    # -- time ----------------------------------------------------------------------------------
    def advance(self, now_s: float) -> Iterator[tuple[Instance, Finished]]:
        """Run every instance to ``now_s``: lifecycle transitions, engine steps, energy. Yields the
        requests that finished, with their instance."""
        if now_s < self.time_s:
            raise ServingModelError(f"time runs forward: {now_s} < {self.time_s}")
        dt = now_s - self.time_s
        empty = self.free_gpus()
        for inst in list(self.instances.values()):
            yield from self._advance_one(inst, now_s)
        # GPUs freed during the interval were empty only from when they were freed: counted in _free
        self.empty_gpu_j += empty * self.empty_gpu_w * dt
        self.energy_j += empty * self.empty_gpu_w * dt
        self.time_s = now_s

    def _advance_one(self, inst: Instance, now_s: float) -> Iterator[tuple[Instance, Finished]]:
        if inst.state in (State.STARTING, State.WAKING) and inst.ready_at <= now_s:
            self._integrate(inst, inst.ready_at)
            inst.state = State.DRAINING if inst.drain_when_ready else State.READY
        if inst.state in (State.READY, State.DRAINING):
            inst.engine.advance(now_s)
            for f in inst.engine.pop_finished():
                inst.engine.forget(f.id)
                yield inst, f
            if inst.state is State.DRAINING and inst.engine.idle:
                done = max(inst.engine.time_s, self.time_s)
                self._integrate(inst, done)
                if inst.sleep_when_drained:
                    inst.state = State.SLEEPING
                else:
                    self._stopping(inst, done)
        if inst.state is State.STOPPING and inst.stop_at <= now_s:
            self._integrate(inst, inst.stop_at)
            self._free(inst, inst.stop_at, now_s)
            return
        self._integrate(inst, now_s)

    def _integrate(self, inst: Instance, t: float) -> None:
        """Add the instance's energy from its mark up to ``t``."""
        dt = max(t - inst.mark_s, 0.0)
        if inst.state in (State.STARTING, State.WAKING):
            joules = self._start_w * inst.tp * dt
        elif inst.state is State.SLEEPING:
            joules = self._sleep_w * inst.tp * dt
        elif inst.state in (State.READY, State.DRAINING):
            now = inst.engine.energy_j_at(max(t, inst.engine.time_s))
            joules, inst.engine_j = now - inst.engine_j, now
        else:  # STOPPING: the process holds its GPUs, idle
            joules = inst.engine.power.idle_gpu_w(inst.engine.clock_mhz) * inst.tp * dt
        inst.energy_j += joules
        self.energy_j += joules
        self.held_gpu_s += inst.tp * dt
        inst.mark_s = max(t, inst.mark_s)

    def _free(self, inst: Instance, at_s: float, now_s: float) -> None:
        inst.state = State.STOPPED
        self.free[inst.node] |= set(inst.gpus)
        del self.instances[inst.id]
        joules = inst.tp * self.empty_gpu_w * max(now_s - at_s, 0.0)  # empty from the stop to now
        self.empty_gpu_j += joules
        self.energy_j += joules
