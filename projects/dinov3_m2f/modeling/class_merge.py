"""Merge the classes of a trained head into fewer classes (e.g. ADE20K-150 -> N coarse classes).

A Mask2Former query predicts a softmax over ``C_old`` classes plus "no object". Merging sums the
probabilities of the old classes in each new class: the new logit of class ``n`` is the
``logsumexp`` of the old logits in its group, so ``softmax(new)[n] == sum(softmax(old)[group n])``
exactly. Old classes named in no group join the no-object logit, so their probability mass is
dropped from every class score. The semantic score of a new class (softmax times sigmoid(mask),
summed over queries) is then exactly the sum of the old classes' scores.

Mapping file (JSON), class ids 0-based in the old label space::

    {"classes": [{"name": "building", "merge": [1, 25, 48]},
                 {"name": "road", "merge": [6, 11]}]}
"""
import json
import logging
from typing import Any, List, Optional, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["ClassMerge", "load_class_merge"]

# State-dict key (below the module) of the old -> new class index.
OLD_TO_NEW_KEY = "old_to_new"


def _validate_groups(groups: Sequence[Sequence[int]], *, num_old_classes: int) -> List[List[int]]:
    if not isinstance(num_old_classes, int) or isinstance(num_old_classes, bool) or num_old_classes < 1:
        raise ValueError(f"num_old_classes must be a positive integer, got {num_old_classes!r}")
    if isinstance(groups, (str, bytes)) or len(groups) == 0:
        raise ValueError(f"groups must be a non-empty list of lists of old class ids, got {groups!r}")
    owner = {}
    validated = []
    for n, group in enumerate(groups):
        if isinstance(group, (str, bytes)) or len(group) == 0:
            raise ValueError(f"groups[{n}] must be a non-empty list of old class ids, got {group!r}")
        ids = []
        for old in group:
            if not isinstance(old, int) or isinstance(old, bool):
                raise TypeError(f"groups[{n}] holds {old!r}; old class ids must be integers")
            if not 0 <= old < num_old_classes:
                raise ValueError(
                    f"groups[{n}] holds old class {old}, outside 0..{num_old_classes - 1} "
                    f"(num_old_classes={num_old_classes})"
                )
            if old in owner:
                where = "twice in the same group" if owner[old] == n else f"also in groups[{owner[old]}]"
                raise ValueError(f"old class {old} in groups[{n}] is {where}; a class may be merged only once")
            owner[old] = n
            ids.append(old)
        validated.append(ids)
    return validated


class ClassMerge(nn.Module):
    """Turns old class logits [..., C_old+1] into merged logits [..., N+1] (last = no object).

    The grouping is a persistent buffer ``old_to_new`` [C_old+1] (int64): old class -> new class,
    ``N`` for the no-object logit (old no-object and every unmerged old class). Loading a state dict
    whose ``old_to_new`` differs from this module's raises, so a checkpoint cannot silently be used
    with another mapping.

    Args:
        groups: one list of old class ids (0-based) per new class.
        num_old_classes: C_old, the classes of the head before merging.
        class_names: optional name per new class (kept for reporting, not stored in checkpoints).
    """

    def __init__(
        self,
        *,
        groups: Sequence[Sequence[int]],
        num_old_classes: int,
        class_names: Optional[Sequence[str]] = None,
    ):
        super().__init__()
        groups = _validate_groups(groups, num_old_classes=num_old_classes)
        if class_names is not None and len(class_names) != len(groups):
            raise ValueError(f"class_names has {len(class_names)} entries for {len(groups)} groups")
        self.num_old_classes = num_old_classes
        self.num_classes = len(groups)
        self.class_names = list(class_names) if class_names is not None else None
        old_to_new = torch.full((num_old_classes + 1,), self.num_classes, dtype=torch.int64)
        for n, group in enumerate(groups):
            old_to_new[group] = n
        self.register_buffer(OLD_TO_NEW_KEY, old_to_new)  # [C_old+1]
        unmerged = (old_to_new[:-1] == self.num_classes).sum().item()
        if unmerged:
            logger.info("ClassMerge: %d of %d old classes go to no-object", unmerged, num_old_classes)

    @property
    def groups(self) -> List[List[int]]:
        """Old class ids of every new class."""
        return [torch.nonzero(self.old_to_new[:-1] == n).flatten().tolist() for n in range(self.num_classes)]

    def extra_repr(self) -> str:
        return f"num_old_classes={self.num_old_classes}, num_classes={self.num_classes}"

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: old class logits [..., C_old+1] (last = no object).

        Returns:
            merged logits [..., N+1] (last = no object), same dtype.
        """
        if logits.shape[-1] != self.num_old_classes + 1:
            raise ValueError(
                f"ClassMerge expects logits [..., {self.num_old_classes + 1}] "
                f"(num_old_classes + no-object), got {tuple(logits.shape)}"
            )
        index = self.old_to_new.expand_as(logits)  # [..., C_old+1]
        out_shape = logits.shape[:-1] + (self.num_classes + 1,)
        # Per-group maximum keeps the logsumexp exact and finite (every group has a member).
        group_max = logits.new_full(out_shape, float("-inf")).scatter_reduce(
            -1, index, logits, reduce="amax", include_self=False
        )  # [..., N+1]
        group_max = group_max.detach()
        shifted = (logits - group_max.gather(-1, index)).exp()  # [..., C_old+1], each <= 1
        sums = logits.new_zeros(out_shape).scatter_add(-1, index, shifted)  # [..., N+1], each >= 1
        return sums.log() + group_max

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        key = prefix + OLD_TO_NEW_KEY
        stored = state_dict.get(key)
        if stored is not None and (
            stored.shape != self.old_to_new.shape or not torch.equal(stored.cpu(), self.old_to_new.cpu())
        ):
            error_msgs.append(
                f"{key}: the checkpoint's class merge (old_to_new {stored.tolist()}) differs from the "
                f"configured one ({self.old_to_new.tolist()}); use the mapping the checkpoint was made with"
            )
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _mapping_error(path: str, message: str) -> ValueError:
    return ValueError(f"class-merge file {path}: {message}")


def load_class_merge(path: str, *, num_old_classes: int) -> ClassMerge:
    """Build a :class:`ClassMerge` from a JSON mapping file (format in the module docstring).

    Args:
        path: the JSON file.
        num_old_classes: classes of the head before merging (e.g. 150 for ADE20K).

    Returns:
        The module, with ``class_names`` from the file.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data: Any = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"class-merge file {path} does not exist") from e
    except json.JSONDecodeError as e:
        raise _mapping_error(path, f"invalid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise _mapping_error(path, 'expected an object {"classes": [{"name": ..., "merge": [ids]}, ...]}')
    names, groups = [], []
    for i, entry in enumerate(data["classes"]):
        if not isinstance(entry, dict) or set(entry) != {"name", "merge"}:
            raise _mapping_error(path, f'classes[{i}] must be {{"name": str, "merge": [ids]}}, got {entry!r}')
        if not isinstance(entry["name"], str) or not isinstance(entry["merge"], list):
            raise _mapping_error(path, f"classes[{i}]: name must be a string and merge a list, got {entry!r}")
        names.append(entry["name"])
        groups.append(entry["merge"])
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise _mapping_error(path, f"duplicate class names {duplicates}")
    try:
        merge = ClassMerge(groups=groups, num_old_classes=num_old_classes, class_names=names)
    except (TypeError, ValueError) as e:
        raise _mapping_error(path, str(e)) from e
    logger.info("Loaded class merge %s: %d old -> %d new classes", path, num_old_classes, merge.num_classes)
    return merge
