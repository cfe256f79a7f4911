"""dinov3-m2f: frozen DINOv3 ViT + ViT-Adapter + Mask2Former semantic segmentation.

The core (``layers``, ``modeling``, ``data``) is plain PyTorch; ``dinov3_m2f.d2`` is the thin
Detectron2 integration layer and is the only subpackage that imports detectron2.
"""

import importlib.util

__version__ = "0.1.0"

# Loads the compiled operators (torch.ops.dinov3_m2f.*) when the extension is built; importing
# the package never fails without it (the error comes when a compiled op is requested).
# Without torch only the torch-free modules work: ``data``, ``windows`` and the ONNX runner
# (``deploy.onnx_runner``, used by ``tools/infer_onnx.py``).
if importlib.util.find_spec("torch") is not None:
    from .layers import _extension  # noqa: E402,F401
