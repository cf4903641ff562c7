"""The epoch a dataset draws its augmentations for, shared with its DataLoader workers.

Datasets seed each sample's draws from (seed, epoch, index), so a sample's views do not depend on the
number of workers or on a resume. The epoch lives in shared memory so that workers kept alive across epochs
(``persistent_workers=True``: no new worker processes every epoch) read the value the trainer set with
``set_epoch`` before starting the epoch; a plain attribute would be frozen in each worker at its start.
"""

from __future__ import annotations

import torch


class SharedEpoch:
    """An int in shared memory: set in the main process, read by forked or spawned DataLoader workers.

    The trainer sets it before it asks the loader for the epoch's first batch, and the workers receive
    that epoch's indices only afterwards, so every sample of an epoch is drawn for that epoch.
    """

    def __init__(self, epoch: int = 0):
        self._value = torch.zeros((), dtype=torch.int64).share_memory_()
        self.set(epoch)

    def get(self) -> int:
        return int(self._value)

    def set(self, epoch: int) -> None:
        self._value.fill_(int(epoch))
