"""Loading LazyConfig files: overrides must name something the config knows, and values are
checked (:mod:`dinov3_m2f.config_schema`) before anything is built."""
import os
from typing import List, Optional, Sequence

from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, MetadataCatalog
from omegaconf import DictConfig

from dinov3_m2f.config_schema import check_config, check_override_keys

__all__ = ["load_config"]


def _registered_class_names(name: str) -> Optional[List[str]]:
    """The ``stuff_classes`` of a registered dataset; None when it is not registered (yet)."""
    if name not in DatasetCatalog.list():
        return None
    classes = MetadataCatalog.get(name).get("stuff_classes")
    return None if classes is None else list(classes)


def load_config(config_file: str, *, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a LazyConfig file, apply ``key=value`` overrides and check the values.

    Raises:
        FileNotFoundError: ``config_file`` does not exist.
        KeyError: an override names no key of the config.
        dinov3_m2f.config_schema.ConfigValueError: a value of the wrong type or range, or class
            names that disagree with ``num_classes``; names the key.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config_file {config_file} does not exist")
    cfg = LazyConfig.load(config_file)
    check_override_keys(cfg, overrides, source=config_file)
    cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    check_config(cfg, lookup=_registered_class_names)
    return cfg
