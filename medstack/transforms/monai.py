"""MONAI interop, both ways, with affines kept right.

- :class:`FromMonai` puts a MONAI dictionary transform (``RandAffined``, ``ScaleIntensityRanged``, ...) inside a
  medstack :class:`~medstack.transforms.Compose`: Volumes become MetaTensors (channel-first, spatial order
  i, j, k, RAS affine) for the call and come back as Volumes with MONAI's updated affine. MONAI's random
  state is re-seeded from medstack's generator on every call, so the result is a pure function of
  ``(seed, epoch, index)`` like the rest of the pipeline.
- :class:`ToMonai` puts a medstack transform inside a ``monai.transforms.Compose`` working on MetaTensors.
"""

from __future__ import annotations

import threading

from monai.transforms import Randomizable

from medstack.errors import ArgumentError
from medstack.volume import Volume

__all__ = ["FromMonai", "ToMonai"]


class FromMonai:
    """Wrap a MONAI dictionary transform for medstack samples of Volumes."""

    takes_rng = True

    def __init__(self, transform, keys=None):
        self.transform = transform
        self.keys = tuple(keys) if keys is not None else tuple(getattr(transform, "keys", ()) or ())
        if not self.keys:
            raise ArgumentError("FromMonai: cannot tell which keys the MONAI transform uses; pass keys=")
        self._lock = threading.Lock()

    def __getstate__(self):  # picklable for DataLoader workers: the lock is per process
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, sample, rng=None):
        import torch

        random = hasattr(self.transform, "set_random_state")
        if random and rng is None:
            raise ArgumentError("FromMonai wraps a random MONAI transform: call it inside Compose(..., seed=)")
        seed = int(torch.randint(0, 2**31 - 1, (), generator=rng).item()) if random else None
        data = dict(sample)
        metas = {}
        for k in self.keys:
            if k in data and isinstance(data[k], Volume):
                metas[k] = data[k].metadata
                data[k] = data[k].to_monai()
        if random:
            # a random MONAI transform keeps its random state and its drawn parameters on itself (randomize()
            # then apply per key): calls from several threads (PatchLoader) must not interleave, or one call's
            # label gets another call's flip/rotation
            with self._lock:
                self.transform.set_random_state(seed=seed)
                out = self.transform(data)
        else:
            out = self.transform(data)
        result = dict(out)
        for k, meta in metas.items():
            result[k] = Volume.from_monai(out[k], metadata={m: v for m, v in meta.items()})
        return result

    def __repr__(self):
        return f"FromMonai({type(self.transform).__name__}, keys={list(self.keys)})"


class ToMonai(Randomizable):
    """Wrap a medstack transform for a ``monai.transforms.Compose`` over dicts of MetaTensors.

    Implements MONAI's ``set_random_state(seed=...)`` so ``monai.transforms.Compose.set_random_state`` and
    ``monai.utils.set_determinism`` seed it.
    """

    def __init__(self, transform, seed: int = 0):
        self.transform = transform
        self.set_random_state(seed)

    def set_random_state(self, seed=None, state=None):
        import numpy as np
        import torch

        super().set_random_state(seed, state)
        if seed is None:
            seed = int(state.randint(0, 2**31 - 1)) if state is not None else int(np.random.SeedSequence().entropy % 2**31)
        self._gen = torch.Generator().manual_seed(int(seed))
        return self

    def randomize(self, data=None) -> None:
        """Draws happen inside the medstack transform, from the generator seeded here."""

    def __call__(self, data):
        from monai.data import MetaTensor

        sample = dict(data)
        keys = [k for k, v in data.items() if isinstance(v, MetaTensor)]
        for k in keys:
            sample[k] = Volume.from_monai(data[k])
        out = self.transform(sample, self._gen) if getattr(self.transform, "random", True) else self.transform(sample)
        result = dict(out)
        for k in keys:
            if isinstance(out[k], Volume):
                result[k] = out[k].to_monai()
        return result
