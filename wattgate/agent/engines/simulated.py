"""The emulated engine: ``wattgate sim-backend`` (the serving model in real time) as a child process.

It shares ``--gpu-state-dir`` with the simulated GPUs, so the clocks the agent locks slow or speed
the emulated instance and its modelled power follows. With the agent's ``--sleep-mode`` it starts with
``--enable-sleep-mode`` and sleeps and wakes through vLLM's endpoints, as a vLLM engine does.
"""

from __future__ import annotations

import sys

from wattgate.agent.engines.base import EngineKind
from wattgate.agent.engines.sleepable import SleepableEngine


class SimulatedEngine(SleepableEngine):
    kind_value = EngineKind.SIMULATED
    default_command = (sys.executable, "-m", "wattgate", "sim-backend")

    def command(self) -> list[str]:
        s, o = self.spec, self.options
        cmd = [
            *self.launcher(),
            "--host",
            s.host,
            "--port",
            str(s.port),
            "--model",
            s.model,
            "--tp",
            str(s.tp),
            "--gpus",
            ",".join(map(str, s.gpus)),
        ]
        if o.gpu_state_dir is not None:
            cmd += ["--gpu-state-dir", str(o.gpu_state_dir)]
        cmd += ["--speed", f"{o.speed:g}", "--max-num-seqs", str(s.max_batch)]
        if o.sleep_mode:
            cmd.append("--enable-sleep-mode")
        return [*cmd, *o.extra_args]

    def environment(self) -> dict[str, str]:
        return dict(self.options.env)  # no CUDA here
