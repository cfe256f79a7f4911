"""Device names: one parser (dinov3_m2f.devices) for train.device, the tools' --device and the
benchmarks; the trainer's "cuda" is the GPU of the process' local rank."""
import pytest
import torch

from dinov3_m2f import benchmarking
from dinov3_m2f.d2 import trainer
from dinov3_m2f.devices import check_device_name, parse_device


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "mps", "", None, "CPU"])
def test_a_wrong_name_is_refused_naming_it(name):
    with pytest.raises(ValueError, match=f"got {name!r}"):
        check_device_name(name)
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:<i>'"):
        parse_device(name)


def test_names_on_this_machine():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available()
                                    else torch.device("cpu"))


def test_cuda_is_the_gpu_of_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parse_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert parse_device("cuda:1", local_rank=3) == torch.device("cuda", 1)
    monkeypatch.setattr(trainer.comm, "get_local_rank", lambda: 2)
    assert trainer.resolve_device("cuda") == torch.device("cuda", 2)
    assert trainer.resolve_device("auto") == torch.device("cuda", 2)


def test_cuda_without_cuda_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="device='cuda:0' but CUDA is not available"):
        parse_device("cuda:0")
    assert trainer.resolve_device("auto") == torch.device("cpu")


def test_the_benchmarks_use_the_same_parser():
    assert benchmarking.parse_device is parse_device
