"""Checkpointing that leaves the frozen backbone out, never writes NaN or Inf, loads strictly by
default and never unpickles arbitrary objects.

A frozen DINOv3 ViT (up to 7B parameters) is rebuilt from its own weights file or seeded random
init, so by default checkpoints hold only the trainable modules and the trainer state
(``full=True`` stores everything; loading accepts either). Modules frozen by the config
(``train.trainable`` / ``train.freeze``) are kept: ``tools/train_net.py`` passes the
frozen-by-construction prefixes as ``exclude_prefixes``, so every checkpoint restores the whole
model built from the same config.
"""
import logging
import os
import re
from typing import Any, Dict, Optional, Sequence, Tuple
from urllib.parse import urlparse

from torch import nn

from dinov3_m2f.training import frozen_state_prefixes
from dinov3_m2f.atomic_files import atomic_open
from dinov3_m2f.weights.files import describe_key_mismatch, load_checkpoint_file, save_finite

from .detectron2_private import CheckpointerExtension

logger = logging.getLogger(__name__)

# Files --resume may fall back to: periodic (model_0000039.pth) and final checkpoints, never
# model_best.pth (not the newest state).
RESUMABLE_NAME = re.compile(r"model_(\d+|final)\.pth")


def _readable(path: str) -> bool:
    try:
        load_checkpoint_file(path)
    except (OSError, ValueError) as e:
        logger.warning("Not resuming from %s: %s", path, e)
        return False
    return True


def newest_readable_checkpoint(folder: str) -> Optional[str]:
    """The newest (by modification time) periodic or final checkpoint of ``folder`` that loads,
    or None; files that do not load are named in a warning each."""
    candidates = [os.path.join(folder, f) for f in os.listdir(folder) if RESUMABLE_NAME.fullmatch(f)]
    candidates.sort(key=lambda p: (os.path.getmtime(p), p), reverse=True)
    return next((path for path in candidates if _readable(path)), None)


class TrainableCheckpointer(CheckpointerExtension):
    """A :class:`DetectionCheckpointer` for models with a frozen backbone: ``save`` stores only
    the trainable state unless ``full=True`` (the file records ``"checkpoint_kind"``); files and
    ``last_checkpoint`` are written atomically, and a state holding NaN or Inf is never written;
    ``.pkl`` files are refused, ``.safetensors`` read with safetensors, the rest with
    ``torch.load(weights_only=True)``; frozen keys missing from a trainable-only checkpoint are
    expected, any other key mismatch raises (``strict``) or is logged key by key.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        full: bool = False,
        strict: bool = True,
        exclude_prefixes: Optional[Sequence[str]] = None,
        **kwargs,
    ):
        """
        Args:
            model: the model (possibly DDP-wrapped).
            save_dir: folder for checkpoints.
            full: store the frozen backbone too.
            strict: raise when a loaded checkpoint lacks trainable keys, has unknown keys or
                shapes that differ; False loads what matches and logs every key it skipped
                (a partial initialisation, ``train.init_partial``).
            exclude_prefixes: state-dict prefixes (with trailing dot) left out of trainable-only
                checkpoints; None = :func:`frozen_state_prefixes` of the model at save/load
                time. Pass the value computed before freezing anything by config, so that
                config-frozen modules are still saved.
            kwargs: checkpointables and ``save_to_disk``, as for DetectionCheckpointer.
        """
        super().__init__(model, save_dir, **kwargs)
        self.full = full
        self.strict = strict
        self.exclude_prefixes = list(exclude_prefixes) if exclude_prefixes is not None else None
        self._loading = ""  # the path being loaded, for messages

    def _frozen_prefixes(self) -> Tuple[str, ...]:
        """State-dict prefixes left out of trainable-only checkpoints (``str.startswith`` form)."""
        if self.exclude_prefixes is None:
            return tuple(frozen_state_prefixes(self.model))
        return tuple(self.exclude_prefixes)

    def save(self, name: str, *, tag_last: bool = True, **kwargs: Any) -> None:
        """Save ``{save_dir}/{name}.pth`` atomically, with extra data ``kwargs`` (``iteration``).

        Args:
            name: file name without ``.pth``.
            tag_last: record the file in ``last_checkpoint``, the file ``--resume`` continues
                from (False for the best checkpoint, which is not the newest state).

        Raises:
            FloatingPointError: the model or trainer state holds NaN or Inf; nothing is written.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        state = self.model.state_dict()
        if not self.full:
            frozen = self._frozen_prefixes()
            state = {k: v for k, v in state.items() if not k.startswith(frozen)}
        data: Dict[str, Any] = {
            "model": state,
            "checkpoint_kind": "full" if self.full else "trainable",
        }
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        logger.info("Saving %s checkpoint to %s", data["checkpoint_kind"], save_file)
        save_finite(data, save_file)
        if tag_last:
            self.tag_last_checkpoint(basename)

    def get_checkpoint_file(self) -> str:
        """The file ``last_checkpoint`` names; when that file is missing or empty, a warning
        naming it and the newest readable periodic or final checkpoint instead.

        Raises:
            FileNotFoundError: no checkpoint of the folder can be resumed from; names the file
                ``last_checkpoint`` named.
        """
        named = super().get_checkpoint_file()
        if not named:  # last_checkpoint is gone (it was there when has_checkpoint was asked)
            return named
        if os.path.isfile(named) and os.path.getsize(named) > 0:
            return named
        problem = "is empty" if os.path.isfile(named) else "does not exist"
        if named.rstrip(os.sep) == self.save_dir.rstrip(os.sep):
            named, problem = os.path.join(self.save_dir, "last_checkpoint"), "names no file"
        fallback = newest_readable_checkpoint(self.save_dir)
        if fallback is None:
            raise FileNotFoundError(
                f"Cannot resume: {named} (named in {self.save_dir}/last_checkpoint) {problem}, "
                f"and {self.save_dir} holds no other readable model_*.pth checkpoint"
            )
        logger.warning("%s (named in last_checkpoint) %s; resuming from %s, the newest readable "
                       "checkpoint, instead", named, problem, fallback)
        return fallback

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically record ``last_filename_basename`` as the newest checkpoint."""
        with atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """DetectionCheckpointer's ``load`` (same arguments) with the path in its messages.

        Raises:
            ValueError: ``path`` has a URL query (``?...``), which detectron2 would drop.
        """
        if path and urlparse(path).query:
            raise ValueError(
                f"Checkpoint {path}: URL queries are not supported (got '?{urlparse(path).query}')"
            )
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = ""

    def read_file(self, filename: str) -> Dict[str, Any]:
        return load_checkpoint_file(filename)

    def load_model_state(self, checkpoint: Dict[str, Any]):
        incompatible = super().load_model_state(checkpoint)
        if checkpoint.get("checkpoint_kind") == "trainable":
            frozen = self._frozen_prefixes()
            incompatible.missing_keys[:] = [
                k for k in incompatible.missing_keys if not k.startswith(frozen)
            ]
        if self.strict and any(incompatible):
            raise RuntimeError(
                f"Checkpoint {self._loading} does not match the model: "
                f"{self._mismatch(incompatible)}. To initialise training from the matching "
                "weights only, set train.init_partial=True"
            )
        return incompatible

    @staticmethod
    def _mismatch(incompatible) -> str:
        return describe_key_mismatch(missing=incompatible.missing_keys,
                                     unexpected=incompatible.unexpected_keys,
                                     wrong_shapes=incompatible.incorrect_shapes)

    def report_incompatible_keys(self, incompatible) -> None:
        """Log every key a partial load skipped, in one warning."""
        if any(incompatible):
            logger.warning(
                "Partial load of %s, skipped: %s (the model's own initialisation is kept for "
                "the missing and wrong-shape keys)", self._loading, self._mismatch(incompatible),
            )
