"""Fault matrix (docs/reliability.md), rows that need no detectron2: atomic checkpoint writes,
a full disk, untrusted pickles in weight files."""
import errno
import os
import pickle
import stat

import pytest
import torch
from helpers import load_tool, load_vit_fixture, write_code_executing_checkpoint

from dinov3_m2f.modeling.dinov3 import build_dinov3, kwargs_from_official_config
from dinov3_m2f.weights import load_dinov3_weights
from dinov3_m2f import atomic_files
from dinov3_m2f.atomic_files import atomic_open, atomic_torch_save



class _SimulatedCrash(RuntimeError):
    pass


def _save_half_then_crash(obj, f, *args, **kwargs):
    """Stands in for torch.save: writes some bytes, then dies as a killed process would."""
    f.write(b"PK\x03\x04 half a zip archive")
    f.flush()
    raise _SimulatedCrash("killed during torch.save")


def test_crash_during_checkpoint_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model_final.pth"
    atomic_torch_save({"iteration": 1, "w": torch.ones(3)}, str(path))
    before = path.read_bytes()

    monkeypatch.setattr(torch, "save", _save_half_then_crash)
    with pytest.raises(_SimulatedCrash):
        atomic_torch_save({"iteration": 2, "w": torch.zeros(3)}, str(path))
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["iteration"] == 1
    assert os.listdir(tmp_path) == ["model_final.pth"]  # no temporary file left behind

    # a crash on the very first save leaves no file at all under the final name
    fresh = tmp_path / "fresh.pth"
    monkeypatch.setattr(torch, "save", _save_half_then_crash)
    with pytest.raises(_SimulatedCrash):
        atomic_torch_save({"w": torch.ones(1)}, str(fresh))
    assert not fresh.exists() and os.listdir(tmp_path) == ["model_final.pth"]


def test_atomic_save_gives_the_permissions_of_a_plain_save(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.ones(1)}, plain)
    atomic = tmp_path / "atomic.pth"
    atomic_torch_save({"w": torch.ones(1)}, str(atomic))
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


@pytest.fixture
def full_disk(monkeypatch):
    """Temporary files are created as usual, but written through /dev/full (every write: ENOSPC)."""
    make_temp_file = atomic_files._make_temp_file

    def temp_file_on_a_full_disk(folder, suffix):
        fd, tmp_path = make_temp_file(folder, suffix)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), tmp_path

    monkeypatch.setattr(atomic_files, "_make_temp_file", temp_file_on_a_full_disk)


@pytest.mark.parametrize("numel", [1, 1_000_000])  # fits in the file buffer / written straight through
def test_full_disk_names_the_path_and_keeps_the_previous_checkpoint(tmp_path, request, numel):
    path = tmp_path / "model_final.pth"
    atomic_torch_save({"iteration": 1, "w": torch.ones(3)}, str(path))
    before = path.read_bytes()
    request.getfixturevalue("full_disk")
    with pytest.raises(OSError) as info:
        atomic_torch_save({"iteration": 2, "w": torch.zeros(numel)}, str(path))
    assert info.value.errno == errno.ENOSPC
    assert str(info.value).startswith(f"[Errno {errno.ENOSPC}] No space left on device: cannot write {path};")
    assert "inline_container" not in str(info.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model_final.pth"]  # no temporary file left behind


def test_full_disk_while_writing_text_names_the_path(tmp_path, full_disk):
    path = tmp_path / "last_checkpoint"
    with pytest.raises(OSError, match=f"No space left on device: cannot write {path}") as info:
        with atomic_open(str(path), "w") as f:
            f.write("model_0000999.pth")
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_exhausted_quota_is_reported_like_a_full_disk(tmp_path):
    path = tmp_path / "model.pth"
    with pytest.raises(OSError, match=f"Disk quota exceeded: cannot write {path}") as info:
        with atomic_open(str(path), "wb"):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))  # what write() raises over quota
    assert info.value.errno == errno.EDQUOT
    assert os.listdir(tmp_path) == []


def _empty_vit():
    return build_dinov3(None, **kwargs_from_official_config(load_vit_fixture("mlp")["config"]))


def test_dinov3_weights_refuse_code_in_pickle(tmp_path):
    marker = tmp_path / "code_ran"
    path = write_code_executing_checkpoint(tmp_path / "evil.pth", marker)
    with pytest.raises(ValueError, match=r"evil\.pth.*weights_only=True"):
        load_dinov3_weights(_empty_vit(), path)
    assert not marker.exists()


def test_convert_weights_refuses_code_in_pickle(tmp_path):
    tool = load_tool("convert_weights")
    marker = tmp_path / "code_ran"
    path = write_code_executing_checkpoint(tmp_path / "evil.pth", marker)
    out = tmp_path / "converted.pth"
    with pytest.raises(ValueError, match=r"Could not read checkpoint .*evil\.pth.*weights_only=True"):
        tool.main([path, str(out)])
    assert not marker.exists() and not out.exists()


def test_payload_really_runs_code_when_unpickled(tmp_path):
    """Guards the two tests above: with full unpickling the payload does create the marker."""
    marker = tmp_path / "code_ran"
    path = write_code_executing_checkpoint(tmp_path / "evil.pkl", marker, plain_pickle=True)
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()
