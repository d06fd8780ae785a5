"""A small model fitted on synthetic data, so format tests do not depend on the shipped artefact."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from wattgate.classifier.model import ClassifierModel
from wattgate.classifier.train import build_model, export_trees, fit_head, fit_text, text_matrix
from wattgate.profiles.classes import ClassEdges

NAMES = ("a", "b", "c", "txt_S", "txt_M", "txt_L")


@pytest.fixture(scope="session")
def tiny() -> tuple[ClassifierModel, Any, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, len(NAMES)))
    y = np.digitize(x[:, 0] + 0.3 * rng.normal(size=600), [-0.5, 0.5])
    ids = [list(rng.integers(0, 1000, size=20)) for _ in range(600)]
    text = fit_text(text_matrix(ids, 256), y)
    head = fit_head(x, y)
    model = build_model(
        version=3, feature_names=NAMES, text=text, head=export_trees(head), edges=ClassEdges(), notes={"test": True}
    )
    return model, head, x
