"""Build and install dinov3-m2f.

The Python package ``dinov3_m2f`` lives in ``projects/dinov3_m2f``; the compiled extension
``dinov3_m2f._C`` is built from the C++/CUDA sources under ``ops/``.

Build options (environment variables):
    FORCE_CUDA=1            compile the CUDA kernels even when no GPU is visible.
    TORCH_CUDA_ARCH_LIST    CUDA architectures to compile for; when no GPU is visible and the
                            variable is unset, ``DEFAULT_CUDA_ARCHS`` is used.
    CUDA_HOME               CUDA toolkit root (``/usr/local/cuda`` on most machines).
"""
import glob
import os
import re

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
OPS_DIR = "ops"
# Ampere and Hopper: the data-centre GPUs our users train on.
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def _version() -> str:
    """``dinov3_m2f.__version__``, read from the package without importing it."""
    with open(os.path.join(ROOT, "projects", "dinov3_m2f", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"$', f.read(), re.MULTILINE).group(1)


def _with_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def _extensions():
    cpp_sources = sorted(glob.glob(os.path.join(OPS_DIR, "**", "*.cpp"), recursive=True))
    cuda_sources = sorted(glob.glob(os.path.join(OPS_DIR, "**", "*.cu"), recursive=True))
    extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
    define_macros = []
    extension = CppExtension
    sources = cpp_sources
    if _with_cuda():
        if not torch.cuda.is_available() and "TORCH_CUDA_ARCH_LIST" not in os.environ:
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        extension = CUDAExtension
        sources = cpp_sources + cuda_sources
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "--use_fast_math"]
    return [
        extension(
            name="dinov3_m2f._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, OPS_DIR)],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    name="dinov3_m2f",
    version=_version(),
    description="Frozen DINOv3 + ViT-Adapter + Mask2Former semantic segmentation for Detectron2",
    python_requires=">=3.10",
    package_dir={"dinov3_m2f": "projects/dinov3_m2f"},
    packages=["dinov3_m2f"]
    + ["dinov3_m2f." + p for p in find_packages(where="projects/dinov3_m2f")],
    install_requires=["fvcore", "pycocotools", "opencv-python-headless", "scipy", "safetensors", "tqdm"],
    extras_require={
        "test": ["pytest", "transformers"],
        # tools/export_model.py (onnx, onnxscript) and the ONNX runner (onnxruntime)
        "deploy": ["onnx", "onnxruntime", "onnxscript"],
        # GeoTIFF and other GDAL rasters in and out, window by window (tools/segment_scenes.py)
        "geo": ["rasterio"],
    },
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension},
)
