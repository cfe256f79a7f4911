"""The modes of ``dev/benchmark.py``, one module each (``main(argv) -> exit code``); the options
and table cells they share are in :mod:`.common`, the measuring helpers in
``dinov3_m2f.benchmarking``."""
