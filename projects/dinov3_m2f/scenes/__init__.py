"""Large scenes (no detectron2): block-wise segmentation of rasters of any size, GeoTIFF in and out.

``bands`` (band selection and value range), ``readers`` (scenes read by window), ``writers``
(label and confidence rasters), ``overlay`` (previews), ``segment`` (one scene), ``tiles``
(training tiles cut from a scene) and ``jobs`` (many scenes, restartable).
"""
