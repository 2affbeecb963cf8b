"""Our MXFP4 cast against a peer's: torchao's ``MXTensor.to_mx`` (OCP floor rule), an
implementation that shares no code with ours, byte for byte on the oracle suite's adversarial
inputs (finite rows: how a peer encodes NaN/Inf is its own choice). NVFP4 is measured, not
tested: torchao's block-scale rule differs from Transformer Engine's, which we follow
(``experiments/bench/peers.py``)."""

import numpy as np
import pytest
import torch

from experiments.bench.peers import agreement, torchao_quantizers
from tests.quant.test_block_quantizers import adversarial, extremes

INPUTS = {"adversarial": adversarial, "extremes": extremes}


def _peer(name_part: str):
    peers = torchao_quantizers()
    assert not isinstance(peers, str), peers  # torchao is in the dev extras
    return next(p for p in peers if name_part in p.name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("data", INPUTS)
def test_mxfp4_floor_equals_torchao_byte_for_byte(data, dtype):
    x = torch.from_numpy(np.asarray(INPUTS[data](64, 128))).float()
    x = x[torch.isfinite(x).all(dim=1)].to(dtype).contiguous()
    assert x.shape[0] >= 32  # most rows are finite: the comparison covers the suite's cases
    assert agreement(_peer("to_mx"), x) == {"codes_equal": 1.0, "scales_equal": 1.0}


def test_nvfp4_agreement_is_measured_on_matching_layouts():
    """The NVFP4 peer returns our layout; on plain Gaussian float32 data, where the two
    block-scale rules rarely part, nearly every byte agrees (the benchmark reports the rest)."""
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    got = agreement(_peer("to_nvfp4"), x)
    assert got["codes_equal"] > 0.99 and got["scales_equal"] > 0.99, got
