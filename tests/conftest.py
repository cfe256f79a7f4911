"""Session-wide fixtures shared by several test modules (keep this file small)."""
import os
import subprocess
import sys

import pytest
from skip_policy import pytest_addoption, pytest_configure  # noqa: F401 (--only-cuda-skips)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC_CONFIG = os.path.join(REPO, "configs", "synthetic", "m2f_tiny_synthetic.py")
_TRAIN_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def synthetic_env(tmp_path_factory):
    """Environment for subprocesses: ``DETECTRON2_DATASETS`` with the generated synthetic data,
    ``PYTHONPATH`` with the repo's ``projects/``, one OpenMP thread."""
    pytest.importorskip("detectron2")
    from dinov3_m2f.data.synthetic import ensure_synthetic_dataset

    datasets = str(tmp_path_factory.mktemp("datasets"))
    ensure_synthetic_dataset(os.path.join(datasets, "dinov3_m2f_synthetic"))
    environ = dict(os.environ)
    environ["DETECTRON2_DATASETS"] = datasets
    environ["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(REPO, "projects"), environ.get("PYTHONPATH", "")]
    )
    environ["OMP_NUM_THREADS"] = "1"
    return environ


@pytest.fixture(scope="session")
def tiny_synthetic_checkpoint(synthetic_env, tmp_path_factory):
    """A trainable-only checkpoint of the synthetic config after 2 iterations of
    ``tools/train_net.py`` (batch 2, no worker processes); trained once per session."""
    out = str(tmp_path_factory.mktemp("tiny_synthetic_run"))
    command = [
        sys.executable, os.path.join(REPO, "tools", "train_net.py"),
        "--config-file", SYNTHETIC_CONFIG,
        f"train.output_dir={out}", "train.max_iter=2", "train.eval_period=0",
        "train.checkpointer.period=100", "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
        "model.criterion.num_points=256",
    ]
    proc = subprocess.run(command, env=synthetic_env, capture_output=True, text=True,
                          timeout=_TRAIN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return os.path.join(out, "model_final.pth")


@pytest.fixture
def catalog():
    """Remove every dataset registered during the test from detectron2's global catalogs."""
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog, MetadataCatalog

    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.fixture
def registered_under():
    """``registered_under(register_all, prefix, splits, root)`` registers a family of standard
    names under ``root`` instead of ``$DETECTRON2_DATASETS``; the original registration is
    restored after the test."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from dinov3_m2f.data.files import datasets_root

    restore = []

    def remove(names):
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

    def register(register_all, prefix, splits, root):
        names = [f"{prefix}_{split}" for split in splits]
        remove(names)
        register_all(str(root))
        restore.append((register_all, names))

    yield register
    for register_all, names in restore:
        remove(names)
        register_all(datasets_root())
