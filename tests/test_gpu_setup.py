"""What a GPU run is set up with, checked on the CPU: the flat buffers' alignment on CUDA (and the
CPU layout kept as every CPU run was measured), and TF32 set through PyTorch's current precision API."""

import pytest
import torch

from deep import env
from gamma_theory.flat import ALIGN, CUDA_ALIGN_BYTES, FlatLayout, FlatParams, default_align


def _named():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5), torch.nn.Flatten(),
                            torch.nn.Linear(5 * 6 * 6, 7))
    return m, list(m.named_parameters())


def test_slices_start_on_256_bytes_on_cuda_and_the_cpu_layout_is_unchanged():
    assert default_align("cuda", torch.float32) == 64 and default_align("cuda:1", torch.float64) == 32
    assert default_align("cpu", torch.float32) == ALIGN == 16 and default_align("cpu", torch.float64) == 16
    m, named = _named()
    cuda = FlatLayout(named, default_align("cuda"))
    assert all(s.offset * 4 % CUDA_ALIGN_BYTES == 0 for s in cuda.slots) and cuda.size % 64 == 0
    # the CPU default: 16 entries, offsets as before (conv weight 135, bias 5, BN 5 + 5, linear 7 x 180 + 7)
    cpu = FlatParams(m).layout
    assert cpu.align == 16 and [s.offset for s in cpu.slots] == [0, 144, 160, 176, 192, 1456]
    assert [s.offset for s in cuda.slots] == [0, 192, 256, 320, 384, 1664]
    assert FlatParams.like([_named()[0], _named()[0]])[0][1].layout.align == 16


def test_tf32_is_set_and_read_through_the_current_precision_api():
    state = env.precision_state()
    det = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
           torch.backends.cudnn.deterministic)
    try:
        env.set_tf32(True)
        assert env.tf32_enabled()
        env.set_deterministic(allow_tf32=False)
        assert not env.tf32_enabled()
        if env._NEW_PRECISION_API:  # torch >= 2.9: the legacy flags are not touched
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
            assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        with env.deterministic(allow_tf32=True):
            assert env.tf32_enabled() and env.environment(torch.device("cpu"))["allow_tf32"] is True
        assert not env.tf32_enabled()
    finally:  # this process's settings back, for the tests that follow
        env.restore_precision(state)
        torch.use_deterministic_algorithms(det[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = det[1:]
    assert env.precision_state() == state


@pytest.mark.skipif(not env._NEW_PRECISION_API, reason="torch without the per-backend precision API")
def test_the_precision_api_is_the_one_this_torch_has():
    # PyTorch >= 2.9 deprecates allow_tf32; once fp32_precision is set, reading the legacy flag
    # raises, which is why deep/env.py never mixes them
    assert hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn.conv,
                                                                             "fp32_precision")
