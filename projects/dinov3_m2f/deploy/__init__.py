"""Deployment of trained models outside Detectron2.

* ``module``: :class:`SemSegExportModule`, the exportable model (plain PyTorch): an RGB image
  batch in, per-class probabilities and the label map out, normalisation and padding inside.
* ``export``: ``torch.export`` programs (``.pt2``) and ONNX files of that module.
* ``onnx_ops``: the ONNX lowering of the compiled deformable-attention op (``GridSample``).
* ``onnx_runner``: whole-image and sliding-window inference with onnxruntime; it imports neither
  torch, detectron2 nor the compiled extension.

Nothing is imported here, so that ``dinov3_m2f.deploy.onnx_runner`` loads without torch.
"""
