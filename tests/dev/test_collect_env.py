"""python -m dinov3_m2f.collect_env: the environment report."""
import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import torch
from helpers import REPO

from dinov3_m2f import collect_env as collect_env_module
from dinov3_m2f.collect_env import collect_env, cuda_archs, describe_cuda_kernels, format_env
from dinov3_m2f.layers import _extension

PROJECTS = os.path.join(REPO, "projects")
LISTING = textwrap.dedent("""\
    ELF file    1: _C.cpython-311-x86_64-linux-gnu.1.sm_90.cubin
    ELF file    2: _C.cpython-311-x86_64-linux-gnu.2.sm_100.cubin
    ELF file    3: _C.cpython-311-x86_64-linux-gnu.3.sm_80.cubin
    ELF file    4: _C.cpython-311-x86_64-linux-gnu.4.sm_90a.cubin
    PTX file    1: _C.cpython-311-x86_64-linux-gnu.1.sm_90.ptx
""")


def _python_env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([PROJECTS, os.environ.get("PYTHONPATH", "")]))


def test_command_prints_the_report_without_importing_detectron2():
    script = textwrap.dedent("""
        import runpy, sys
        runpy.run_module("dinov3_m2f.collect_env", run_name="__main__")
        assert "detectron2" not in sys.modules, "collect_env imported detectron2"
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_python_env(), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in proc.stdout.splitlines())
    assert rows["torch"].startswith(f"{torch.__version__} @ ")
    assert rows["numpy"] == np.__version__
    for name in ("torchvision", "fvcore", "rasterio"):
        assert rows[name] == importlib.metadata.version(name)
    assert rows["detectron2"].startswith(importlib.metadata.version("detectron2") + " @ ")
    assert rows["GPU available"] == (f"yes ({torch.cuda.device_count()})"
                                     if torch.cuda.is_available() else "no")


def test_extension_rows_match_the_build():
    rows = dict(collect_env())
    if not _extension.is_available():
        assert rows["dinov3_m2f._C"].startswith("not built (")
        return
    library = rows["dinov3_m2f._C"].split(" @ ")[1]
    assert os.path.isfile(library)
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(
        "dinov3_m2f::ms_deform_attn_forward", "CUDA")
    kernels = rows["  CUDA kernels"]
    if not has_cuda:
        assert kernels == "no (CPU kernels only)"
    elif collect_env_module.find_cuobjdump() is None:
        assert kernels == "yes; architectures unknown (cuobjdump not found)"
    else:
        assert re.fullmatch(r"yes: sm_\d+[a-z]?( \(PTX\))?(, sm_\d+[a-z]?( \(PTX\))?)*", kernels)


def test_cuda_archs_from_a_listing():
    assert cuda_archs(LISTING) == ["sm_80", "sm_90", "sm_90 (PTX)", "sm_90a", "sm_100"]
    assert cuda_archs("") == []


def _fake_cuobjdump(tmp_path, name, body):
    tool = tmp_path / name
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(0o755)
    return str(tool)


def test_describe_cuda_kernels(tmp_path):
    listing = tmp_path / "listing.txt"
    listing.write_text(LISTING)
    lists = _fake_cuobjdump(tmp_path, "lists", f'test "$3" = /lib/_C.so && cat {listing}\n')
    assert describe_cuda_kernels("/lib/_C.so", has_cuda_kernels=True, cuobjdump=lists) == (
        "yes: sm_80, sm_90, sm_90 (PTX), sm_90a, sm_100")
    assert describe_cuda_kernels("/lib/_C.so", has_cuda_kernels=False, cuobjdump=lists) == (
        "no (CPU kernels only)")
    assert describe_cuda_kernels("/lib/_C.so", has_cuda_kernels=True, cuobjdump=None) == (
        "yes; architectures unknown (cuobjdump not found)")
    fails = _fake_cuobjdump(tmp_path, "fails", "echo 'cuobjdump fatal: not an ELF file' >&2; exit 1\n")
    assert describe_cuda_kernels("/lib/_C.so", has_cuda_kernels=True, cuobjdump=fails) == (
        f"yes; architectures unknown ({fails}: cuobjdump fatal: not an ELF file)")


def test_format_env_aligns_values():
    assert format_env([("a", "1"), ("long name", "2")]).splitlines() == [
        "a          1", "long name  2"]
