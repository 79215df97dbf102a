"""--amp auto's precision per device (sweepcnn.runtime.resolve_amp), with the CUDA capability mocked."""
import pytest
import torch

from sweepcnn.runtime import amp_name, resolve_amp

CUDA = torch.device("cuda")


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                               ((8, 6), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_picks_bf16_only_where_the_gpu_runs_it_natively(monkeypatch, capability, dtype):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    # what torch answers on a T4 by default (including_emulation=True): no reason to pick bf16 there
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_amp("auto", CUDA) == dtype


def test_explicit_choices_win_on_any_card(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert [resolve_amp(name, CUDA) for name in ("bf16", "fp16", "off")] == [torch.bfloat16, torch.float16, None]


@pytest.mark.parametrize("native, dtype", [(True, torch.bfloat16), (False, None)])
def test_auto_on_the_cpu_is_bf16_where_native_else_off(monkeypatch, native, dtype):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    assert resolve_amp("auto", torch.device("cpu")) == dtype
    assert resolve_amp("auto", torch.device("mps")) is None


def test_the_recorded_names():
    assert [amp_name(d) for d in (torch.bfloat16, torch.float16, None)] == ["bfloat16", "float16", "float32"]
