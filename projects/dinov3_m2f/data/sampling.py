"""The order and randomness of training samples as pure functions of the seed and the position
(no detectron2), so that a resumed run sees exactly what an uninterrupted one would have seen.

Detectron2's ``TrainingSampler`` draws an endless shuffled stream from one generator, and its
augmentations draw from numpy's global random state: neither can restart at iteration N. Here
every sample has a global *position* ``P = 0, 1, 2, ...`` (counted over all processes):

* the dataset index at ``P`` is entry ``P % len(dataset)`` of epoch ``P // len(dataset)``'s
  permutation, drawn with ``torch.randperm`` from a generator seeded by ``(seed, epoch)``;
* numpy's and Python's global random states are seeded from ``(seed, P)`` just before the sample
  is mapped, so random augmentations depend on the position only;
* process ``rank`` of ``world_size`` takes the positions ``rank, rank + world_size, ...``, so one
  iteration (``total_batch_size x grad_accum_steps`` samples) always covers the same block of
  positions, whatever the number of processes.

The training loop re-seeds torch's random state every iteration from ``(seed, iteration, rank)``
with :func:`derive_seed` (point sampling, dropout).
"""
import random
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.utils.data as torchdata

__all__ = ["TrainingSampleStream", "derive_seed", "epoch_order"]


def derive_seed(*values: int) -> int:
    """A 32-bit seed that is a pure function of non-negative integers, e.g. ``(seed, iteration,
    rank)``. numpy's ``SeedSequence`` hashes them, so neighbouring values give unrelated streams.

    Args:
        values: non-negative integers.

    Returns:
        An int in ``[0, 2**32)``, valid for ``np.random.seed`` and ``torch.manual_seed``.
    """
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


def epoch_order(size: int, *, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``range(size)`` that epoch ``epoch`` visits, int64 [size]."""
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch))
    return torch.randperm(size, generator=generator)


class TrainingSampleStream(torchdata.IterableDataset):
    """The endless stream of mapped training samples of one process, from any batch on.

    Batch ``j`` of this process holds its samples ``j * batch_size ... (j + 1) * batch_size - 1``
    (the ``k``-th at position ``k * world_size + rank``, see the module docstring). The stream
    starts at batch :attr:`start_batch` (set it before iterating: a run resumed after ``N``
    iterations starts at ``N x grad_accum_steps``). With ``DataLoader`` workers, worker ``w`` of
    ``n`` maps the batches ``start_batch + w, start_batch + w + n, ...``, which the loader's
    round-robin over its workers returns in order; give it ``batch_size`` as its batch size.

    A sample whose ``map_func`` returns ``None`` (a file skipped after failing to read) is
    replaced by the next dataset index, mapped with the same seed: the replacement is the same in
    every run.

    Args:
        dataset: the samples (e.g. detectron2 dataset dicts), indexable.
        map_func: sample -> model input, or ``None`` to skip the sample.
        seed: the run's seed (>= 0).
        batch_size: samples per batch of this process (>= 1).
        rank: this process' index.
        world_size: number of processes taking part in training.
    """

    def __init__(
        self,
        dataset: Sequence[Any],
        map_func: Callable[[Any], Optional[Any]],
        *,
        seed: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        if seed < 0 or batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need seed >= 0, batch_size >= 1 and 0 <= rank < world_size; got seed={seed}, "
                f"batch_size={batch_size}, rank={rank}, world_size={world_size}"
            )
        self.dataset = dataset
        self.map_func = map_func
        self.seed = seed
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.start_batch = 0

    def _mapped(self, position: int, order: torch.Tensor) -> Any:
        """The mapped sample at a global position, ``order`` being its epoch's permutation."""
        size = len(self.dataset)
        index = int(order[position % size])
        sample_seed = derive_seed(self.seed, position)
        for attempt in range(size):
            np.random.seed(sample_seed)
            random.seed(sample_seed)
            sample = self.map_func(self.dataset[(index + attempt) % size])
            if sample is not None:
                return sample
        raise RuntimeError(f"none of the {size} training samples could be read")

    def __iter__(self) -> Iterator[Any]:
        info = torchdata.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        size = len(self.dataset)
        epoch, order = -1, torch.empty(0)
        batch = self.start_batch + worker
        while True:
            for k in range(batch * self.batch_size, (batch + 1) * self.batch_size):
                position = k * self.world_size + self.rank
                if position // size != epoch:
                    epoch = position // size
                    order = epoch_order(size, seed=self.seed, epoch=epoch)
                yield self._mapped(position, order)
            batch += num_workers
