"""The agent's exception tree.

    AgentError              base of every agent failure
    ├── SettingsError       bad command-line options or settings (a clear message, exit 2)
    ├── StartupError        Redis does not answer or the metrics port is taken at start (one line, exit 1)
    ├── ClockStateError     the clock state file cannot be read or written (clocks.py)
    └── EngineError         an engine failed to start, become healthy or stop (engines/base.py)
GPU failures keep their own tree (``wattgate.agent.gpu.base.GpuError``).
"""

from __future__ import annotations


class AgentError(Exception):
    """Base exception of the agent package."""


class SettingsError(AgentError):
    """Invalid settings: the message says which option and why."""


class StartupError(AgentError):
    """The agent cannot start: its Redis does not answer or its metrics port is taken."""
