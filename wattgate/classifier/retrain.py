"""One retrain pass, as ``wattgate classifier retrain`` and ``classifier eval --adapt-fraction`` both run it.

Read the observations the gateways recorded in Redis, adapt the current model (the one published in
Redis, else the shipped one) per served model, and publish the candidate when any served model's
profile was accepted. Gateways pick it up with ``ClassifierWatcher.poll``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wattgate.classifier.adapt import AdaptResult, AdaptSettings, adapt
from wattgate.classifier.predictor import load_shipped_model
from wattgate.classifier.store import ClassifierStore
from wattgate.profiles.classes import ClassEdges


@dataclass(frozen=True)
class RetrainReport:
    result: AdaptResult
    current_version: int
    published: int | None
    read: int  # observations with features, of every served model
    skipped: int  # malformed, failed, or without features

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.result.to_dict(),
            "current_version": self.current_version,
            "published": self.published,
            "observations": self.read,
            "skipped": self.skipped,
        }

    def text(self) -> str:
        lines = [f"observations: {self.read} read, {self.skipped} skipped", self.result.reason]
        lines.append(f"published v{self.published}" if self.published else "nothing published")
        return "\n".join(lines)


def retrain_once(
    store: ClassifierStore,
    settings: AdaptSettings | None = None,
    *,
    limit: int = 100_000,
    dry_run: bool = False,
    edges: ClassEdges | None = None,
) -> RetrainReport:
    """Raises ``ClassifierError`` (``StoreError``, ``ModelFormatError``) when Redis or a document fails."""
    current = store.current_model() or load_shipped_model()
    read = store.read_observations(limit)
    version = max(store.current_version(), current.version) + 1
    result = adapt(current, read.samples, edges or ClassEdges(), settings=settings, version=version)
    published = None
    if result.candidate is not None and not dry_run:
        published = store.publish(result.candidate)
    return RetrainReport(result, current.version, published, len(read.samples), read.skipped)
