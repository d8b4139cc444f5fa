"""A small random-weight digits pipeline for the engine and server tests (no training)."""

from __future__ import annotations

import pytest
import torch
from conftest import shrunk

from marengine.config import MARConfig
from marengine.models import MAR
from marengine.models.tokenizers import PixelTokenizer
from marengine.pipeline import MARPipeline
from marengine.sampling.engine import SampleSettings


def random_digits_pipeline(seed: int = 0, **settings) -> MARPipeline:
    """mar_digits shrunk to width 64 and a 2x64 head with 10 diffusion steps, every weight
    perturbed (the official init zeroes the head's output layers, whose eps would be 0)."""
    torch.manual_seed(seed)
    cfg = MARConfig.from_name("mar_digits", **shrunk(64), diffloss_w=64, diffloss_d=2, num_sampling_steps="10")
    model = MAR.from_config(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    defaults = {"num_iter": 6, "cfg": 2.0, "batch_size": 16, **settings}
    return MARPipeline(model, PixelTokenizer(1, 2), SampleSettings(**defaults))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the engine's worker and the test share a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def strict_digits_pipeline(**settings) -> MARPipeline:
    """random_digits_pipeline, once MKL gives a row the same bits whatever the batch (else skip):
    the engine's images are compared bit for bit with the same requests sampled alone."""
    from marengine.pipeline.batching import batch_invariant_blas

    if not batch_invariant_blas():
        pytest.skip("MKL's strict reproducibility could not be turned on (set MKL_CBWR=AUTO,STRICT)")
    return random_digits_pipeline(**settings)
