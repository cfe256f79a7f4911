"""The decisions of dev/setup_env.sh (dev/setup_torch.py) and the --only-cuda-skips policy of
dev/run_tests.sh (tests/skip_policy.py)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import DEV, REPO, load_tool

setup_torch = load_tool("setup_torch", folder=DEV)
TorchState = setup_torch.TorchState
PINNED_TORCH = setup_torch.PINNED_PAIR[0].split("==")[1]
PINNED_TORCHVISION = setup_torch.PINNED_PAIR[1].split("==")[1]


@pytest.mark.parametrize(
    "state, action, requirements, words",
    [
        (TorchState(), "install", setup_torch.PINNED_PAIR, ["not installed"]),
        (
            TorchState(torch="2.14.1", torch_error="OSError('libcudnn.so.9')"),
            "refuse", [], ["does not import", "libcudnn", "PYTHON="],
        ),
        # the GPU image's torch, the floor of the range: kept
        (
            TorchState(torch="2.11.0+cu130", gpu_build="CUDA 13.0", torchvision="0.26.0+cu130"),
            "keep", [], ["2.11.0+cu130", "0.26.0+cu130", "kept"],
        ),
        (
            TorchState(torch=f"{PINNED_TORCH}+cu130", gpu_build="CUDA 13.0",
                       torchvision=PINNED_TORCHVISION),
            "keep", [], [PINNED_TORCH, "kept"],
        ),
        # GPU builds outside the range, or with a broken torchvision, are never replaced
        (
            TorchState(torch="2.10.0+cu128", gpu_build="CUDA 12.8", torchvision="0.25.0"),
            "refuse", [], ["outside the supported range", setup_torch.SUPPORTED_TEXT, "never replaces"],
        ),
        (
            TorchState(torch="2.15.0", gpu_build="CUDA 13.0", torchvision="0.30.0"),
            "refuse", [], ["outside the supported range"],
        ),
        (
            TorchState(torch="2.12.0+rocm7.0", gpu_build="ROCm 7.0", torchvision="0.27.0",
                       torchvision_error="RuntimeError: operator torchvision::nms does not exist"),
            "refuse", [], ["torchvision 0.27.0 does not work", "torchvision::nms", "never replaces"],
        ),
        # a CPU build that cannot be used is replaced by the pinned pair, saying so
        (
            TorchState(torch="2.13.0+cpu", torchvision="0.28.0",
                       torchvision_error="RuntimeError: operator torchvision::nms does not exist"),
            "install", setup_torch.PINNED_PAIR, ["CPU build", "torchvision::nms", "replacing it"],
        ),
        (
            TorchState(torch="2.4.1+cpu", torchvision="0.19.1"),
            "install", setup_torch.PINNED_PAIR, ["outside the supported range", "replacing it"],
        ),
        # torch kept, the torchvision made for it added (pip holds torch through the constraints)
        (
            TorchState(torch="2.12.1+cu130", gpu_build="CUDA 13.0"),
            "install", ["torchvision"], ["2.12.1+cu130", "kept", "torchvision is not installed"],
        ),
    ],
)
def test_torch_decision(state, action, requirements, words):
    got_action, got_requirements, message = setup_torch.decide(state)
    assert (got_action, got_requirements) == (action, requirements)
    for word in words:
        assert word in message


def test_decision_keeps_the_torch_of_this_interpreter():
    # the suite runs after the set-up: the same decision must keep the torch it runs with
    proc = subprocess.run([sys.executable, str(DEV / "setup_torch.py"), "decide"],
                          capture_output=True, text=True, check=True)
    action, requirements, message = proc.stdout.splitlines()
    assert (action, requirements) == ("keep", "")
    assert f"torch {torch.__version__} " in message


def test_pins_hold_the_installed_versions():
    import importlib.metadata

    assert setup_torch.pins() == [
        f"torch=={importlib.metadata.version('torch')}",
        f"torchvision=={importlib.metadata.version('torchvision')}",
    ]


@pytest.mark.parametrize(
    "force_cuda, torch_cuda, nvcc, build, words",
    [
        ("1", None, None, True, ["FORCE_CUDA=1"]),
        ("0", "13.0", "13.0", False, ["FORCE_CUDA=0"]),
        (None, "13.0", "13.0", True, ["nvcc 13.0"]),
        (None, "13.0", "13.1", True, ["nvcc 13.1"]),
        (None, "12.8", "13.0", False, ["does not match", "12.8"]),
        (None, None, "13.0", False, ["not a CUDA build"]),
        (None, "13.0", None, False, ["no nvcc"]),
    ],
)
def test_cuda_build_decision(force_cuda, torch_cuda, nvcc, build, words):
    got, reason = setup_torch.cuda_build(force_cuda=force_cuda, torch_cuda=torch_cuda, nvcc=nvcc,
                                         cuda_home="/opt/cuda")
    assert got is build
    for word in words:
        assert word in reason


def test_cuda_build_rejects_a_bad_force_cuda():
    with pytest.raises(ValueError, match="FORCE_CUDA must be 0 or 1, got 'yes'"):
        setup_torch.cuda_build(force_cuda="yes", torch_cuda="13.0", nvcc="13.0", cuda_home="/c")


def test_nvcc_release(tmp_path):
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.4, V12.4.131'\n")
    nvcc.chmod(0o755)
    assert setup_torch.nvcc_release(str(tmp_path)) == "12.4"
    assert setup_torch.nvcc_release(str(tmp_path / "missing")) is None
    assert setup_torch.nvcc_release(None) is None


_PASSES = "def test_passes():\n    pass\n"
_CUDA_SKIP = textwrap.dedent("""
    import pytest

    @pytest.mark.skipif(True, reason="needs a CUDA GPU")
    def test_cuda():
        pass
""")
_MODULE_SKIP = "import pytest\npytest.importorskip('no_such_module_for_the_skip_policy')\n"
_TEST_SKIP = "import pytest\n\ndef test_x():\n    pytest.skip('needs detectron2')\n"


@pytest.mark.parametrize(
    "files, strict, returncode, listed",
    [
        ({"test_a.py": _PASSES, "test_cuda.py": _CUDA_SKIP}, True, 0, []),
        ({"test_a.py": _PASSES, "test_mod.py": _MODULE_SKIP}, True, 1,
         ["test_mod.py", "no_such_module_for_the_skip_policy"]),
        ({"test_a.py": _PASSES, "test_x.py": _TEST_SKIP}, True, 1, ["test_x.py::test_x",
                                                                    "needs detectron2"]),
        ({"test_a.py": _PASSES, "test_mod.py": _MODULE_SKIP}, False, 0, []),
    ],
)
def test_only_cuda_skips(tmp_path, files, strict, returncode, listed):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "tests"))
    command = [sys.executable, "-m", "pytest", "-p", "skip_policy", "-p", "no:cacheprovider",
               str(tmp_path)] + (["--only-cuda-skips"] if strict else [])
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == returncode, proc.stdout[-3000:]
    summary = proc.stdout.split("--only-cuda-skips:")[-1] if listed else ""
    for word in listed:
        assert word in summary
    assert ("skip(s) not allowed" in proc.stdout) == bool(listed)


# ---------------------------------------------------------------- the op build (dev/op_build.py)

op_build = load_tool("op_build", folder=DEV)


def _checkout(root):
    """A checkout with op sources, build files and a (fake) compiled extension."""
    (root / "ops" / "ms_deform_attn").mkdir(parents=True)
    (root / "ops" / "ms_deform_attn" / "ms_deform_attn_cpu.cpp").write_text("// kernel\n")
    (root / "ops" / "register.cpp").write_text("// registration\n")
    (root / "setup.py").write_text("# setup\n")
    (root / "pyproject.toml").write_text("# build system\n")
    package = root / "projects" / "dinov3_m2f"
    package.mkdir(parents=True)
    (package / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF compiled")
    return package / "_C.cpython-311-x86_64-linux-gnu.so"


def _decide(root, installed=True):
    return op_build.decide(op_build.read_record(str(root)), op_build.current_state(str(root)),
                           installed=installed)


def test_an_unchanged_build_is_kept_and_any_change_rebuilds(tmp_path, monkeypatch):
    monkeypatch.delenv("FORCE_CUDA", raising=False)
    extension = _checkout(tmp_path)
    assert _decide(tmp_path) == ("build", "no record of the op's build")
    op_build.write_record(str(tmp_path))
    action, message = _decide(tmp_path)
    assert action == "keep" and message.startswith("op up to date, kept")
    assert _decide(tmp_path, installed=False)[0] == "build"  # e.g. another venv

    (tmp_path / "ops" / "ms_deform_attn" / "ms_deform_attn_cpu.cpp").write_text("// faster kernel\n")
    assert _decide(tmp_path) == ("build", f"{op_build.RECORD_NAMES['sources']} changed since the last build")
    op_build.write_record(str(tmp_path))
    (tmp_path / "ops" / "new_op.cu").write_text("// a new file\n")
    assert _decide(tmp_path)[0] == "build"
    op_build.write_record(str(tmp_path))

    monkeypatch.setenv("FORCE_CUDA", "1")
    action, message = _decide(tmp_path)
    assert action == "build" and "build settings changed" in message and "'FORCE_CUDA': '1'" in message
    monkeypatch.delenv("FORCE_CUDA")
    assert _decide(tmp_path)[0] == "keep"

    extension.write_bytes(b"\x7fELF built elsewhere")
    assert _decide(tmp_path) == ("build", "the extension file changed since the last build")
    extension.unlink()
    assert _decide(tmp_path) == ("build", "the op is not built")


def test_another_torch_rebuilds_naming_both(tmp_path):
    _checkout(tmp_path)
    op_build.write_record(str(tmp_path))
    recorded = dict(op_build.read_record(str(tmp_path)), torch="2.13.0 (CUDA 12.8)")
    action, message = op_build.decide(recorded, op_build.current_state(str(tmp_path)), installed=True)
    assert action == "build"
    assert message == f"torch changed: 2.13.0 (CUDA 12.8) -> {torch.__version__} (CUDA {torch.version.cuda})"


def test_the_install_must_come_from_this_checkout(tmp_path):
    assert not op_build.installed_from(str(tmp_path))
