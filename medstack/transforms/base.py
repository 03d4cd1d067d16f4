"""Sample-level machinery: keys, seeded randomness, Compose / OneOf / RandomApply, inversion.

A sample is a dict, e.g. ``{"image": Volume, "label": Volume, "id": "case_001"}``. A transform returns a
new dict (never mutating its input, never deep-copying): values it does not touch are shared.

Randomness: a random transform draws its parameters once per call from the ``torch.Generator`` it is
given (shared by all its keys, so image and label get the same flip), then applies the deterministic
operation. :class:`Compose` derives that generator from ``(seed, epoch, index)``, so an augmentation is a
pure function of those three numbers, independent of DataLoader workers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medstack.errors import ArgumentError
from medstack.volume import Volume

LABEL_HINTS = ("label", "seg", "mask")


def generator_for(seed: int, epoch: int = 0, index: int = 0):
    """A ``torch.Generator`` seeded from ``(seed, epoch, index)`` (SeedSequence mixing, no collisions)."""
    import torch

    words = [int(seed) & 0xFFFFFFFF, int(epoch) + 1, int(index) + 1]  # +1: the stream uses epoch -1
    if min(words) < 0:
        raise ArgumentError(f"seed, epoch and index must be non-negative (epoch may be -1), got {seed}, {epoch}, {index}")
    state = np.random.SeedSequence(words).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]) & 0x7FFFFFFFFFFFFFFF)


def uniform(rng, low: float, high: float) -> float:
    import torch

    return float(low + (high - low) * torch.rand((), generator=rng).item())


def _as_range(value, name: str, *, symmetric: bool = True) -> tuple[float, float]:
    """``x`` -> ``(-x, x)`` (or ``(1 - x, 1 + x)`` handled by callers); ``(lo, hi)`` kept."""
    if isinstance(value, int | float):
        return (-float(value), float(value)) if symmetric else (float(value), float(value))
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ArgumentError(f"{name}: range ({lo}, {hi}) has low > high")
    return lo, hi


class Transform:
    """Base class: applies :meth:`apply` to each key of a sample.

    Parameters
    ----------
    keys : str or sequence of str
        Sample keys to transform (MONAI convention).
    allow_missing_keys : bool
        Skip keys absent from the sample instead of raising.
    """

    random = False
    takes_rng = True

    def __init__(self, keys: str | Sequence[str] = ("image",), *, allow_missing_keys: bool = False):
        self.keys = (keys,) if isinstance(keys, str) else tuple(keys)
        if not self.keys:
            raise ArgumentError(f"{type(self).__name__}: keys must not be empty")
        self.allow_missing_keys = allow_missing_keys

    # -- to override ------------------------------------------------------------------------------
    def sample_params(self, sample: Mapping, rng) -> Any:
        """Draw the random parameters of one call (random transforms only)."""
        return None

    def call_params(self, sample: Mapping, rng) -> Any:
        """Everything one call needs beyond the volume: random draws and values derived from the sample (a crop
        box, a mask). Returned, never stored on ``self``: a transform object is shared by threads (PatchLoader
        workers), so per-call state on ``self`` would let one call's image and label get another call's box."""
        return self.sample_params(sample, rng) if self.random else None

    def apply(self, volume: Volume, params: Any, key: str) -> Volume:
        raise NotImplementedError  # pragma: no cover - every concrete transform implements it

    # -- machinery --------------------------------------------------------------------------------
    def __call__(self, sample: Mapping, rng=None):
        if isinstance(sample, Volume):  # convenience: a bare Volume is the sample {keys[0]: volume}
            return self({self.keys[0]: sample}, rng)[self.keys[0]]
        if not isinstance(sample, Mapping):
            raise ArgumentError(f"{type(self).__name__} expects a sample dict or a Volume, got {type(sample).__name__}")
        out = dict(sample)
        present = [k for k in self.keys if k in out]
        missing = [k for k in self.keys if k not in out]
        if missing and not self.allow_missing_keys:
            raise ArgumentError(f"{type(self).__name__}: key(s) {missing} not in the sample (it has "
                                f"{sorted(map(str, out))}); pass allow_missing_keys=True to skip them")  # fmt: skip
        if self.random and rng is None:
            raise ArgumentError(f"{type(self).__name__} is random: call it with rng=torch.Generator (or inside "
                                "Compose(..., seed=...))")  # fmt: skip
        params = self.call_params(out, rng)
        for key in present:
            value = out[key]
            if not isinstance(value, Volume):
                raise ArgumentError(f"{type(self).__name__}: sample[{key!r}] is a {type(value).__name__}, expected a "
                                    "medstack.Volume")  # fmt: skip
            out[key] = self.apply(value, params, key)
        return out

    def __repr__(self):
        """The class, its keys and every parameter (public attribute): the description ``prepare`` fingerprints,
        so a changed parameter rebuilds a store."""
        params = [f"{k}={param_repr(v)}" for k, v in vars(self).items()
                  if not k.startswith("_") and k not in ("keys", "allow_missing_keys")]  # fmt: skip
        return f"{type(self).__name__}({', '.join([f'keys={list(self.keys)}', *params])})"


def param_repr(value) -> str:
    """A parameter's repr without memory addresses: arrays as lists, functions by module and name."""
    if isinstance(value, np.ndarray):
        return repr(value.tolist())
    if isinstance(value, np.generic):
        return repr(value.item())
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    if isinstance(value, list | tuple):
        inner = ", ".join(param_repr(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {param_repr(v)}" for k, v in value.items()) + "}"
    return repr(value)


class RandomTransform(Transform):
    """A transform applied with probability ``p``; the coin and the parameters come from the generator."""

    random = True

    def __init__(self, keys=("image",), *, p: float = 1.0, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        if not 0.0 <= p <= 1.0:
            raise ArgumentError(f"{type(self).__name__}: p must be in [0, 1], got {p}")
        self.p = p

    def sample_params(self, sample, rng):
        import torch

        if torch.rand((), generator=rng).item() >= self.p:
            return None
        return self.draw(sample, rng)

    def draw(self, sample, rng):
        raise NotImplementedError  # pragma: no cover

    def apply(self, volume, params, key):
        return volume if params is None else self.apply_params(volume, params, key)

    def apply_params(self, volume, params, key):
        raise NotImplementedError  # pragma: no cover


def interpolation_for(keys: Sequence[str], mode, owner: str) -> dict[str, str]:
    """Per-key interpolation: a str for all keys, a sequence aligned with keys, or a dict.

    By default keys whose name contains label/seg/mask use ``"nearest"``, others ``"linear"``. Giving
    ``"linear"`` to such a key explicitly warns (label values would be blended).
    """
    if mode is None:
        return {k: "nearest" if any(h in k.lower() for h in LABEL_HINTS) else "linear" for k in keys}
    if isinstance(mode, str):
        modes = dict.fromkeys(keys, mode)
    elif isinstance(mode, Mapping):
        modes = {k: mode.get(k, "linear") for k in keys}
    else:
        if len(mode) != len(keys):
            raise ArgumentError(f"{owner}: mode has {len(mode)} entries for {len(keys)} keys")
        modes = dict(zip(keys, mode))
    for k, m in modes.items():
        if m not in ("linear", "nearest", "cubic"):
            raise ArgumentError(f"{owner}: mode for key {k!r} must be linear, nearest or cubic, got {m!r}")
        if m != "nearest" and any(h in k.lower() for h in LABEL_HINTS):
            warnings.warn(f"{owner}: key {k!r} looks like a label map but uses {m!r} interpolation (label values "
                          "will be blended); use mode='nearest' for it", UserWarning, stacklevel=3)  # fmt: skip
    return modes


class Compose:
    """Apply transforms in order; random ones get a generator derived from ``(seed, epoch, index)``.

    ``compose(sample)`` uses an internal generator seeded once from ``seed`` (a reproducible stream);
    ``compose(sample, index=i, epoch=e)`` is a pure function of ``(seed, e, i)`` — what datasets call.
    """

    takes_rng = True

    def __init__(self, transforms: Sequence, *, seed: int | None = None):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise ArgumentError(f"Compose: {t!r} is not callable")
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**31))  # fresh entropy, never the global RNG
        self.seed = int(seed)
        self._stream = generator_for(self.seed, -1, 0)

    def __call__(self, sample, rng=None, *, index: int | None = None, epoch: int = 0):
        if rng is None:
            rng = generator_for(self.seed, epoch, index) if index is not None else self._stream
        for t in self.transforms:
            sample = _call(t, sample, rng)
        return sample

    def __repr__(self):
        inner = ",\n  ".join(map(repr, self.transforms))
        return f"Compose(seed={self.seed}, [\n  {inner}\n])"


def _call(t, sample, rng):
    if getattr(t, "takes_rng", False):
        return t(sample, rng)
    return t(sample)  # plain callables (e.g. a lambda) take the sample only


class OneOf:
    """Apply one of ``transforms``, chosen with ``weights`` (default equal) from the generator."""

    takes_rng = True

    def __init__(self, transforms: Sequence, weights: Sequence[float] | None = None):
        self.transforms = list(transforms)
        if not self.transforms:
            raise ArgumentError("OneOf needs at least one transform")
        w = np.ones(len(self.transforms)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(self.transforms),) or np.any(w < 0) or w.sum() <= 0:
            raise ArgumentError(f"OneOf: weights must be {len(self.transforms)} non-negative numbers, got {weights}")
        self.weights = w / w.sum()

    def __repr__(self):
        inner = ", ".join(map(repr, self.transforms))
        return f"OneOf([{inner}], weights={param_repr(self.weights)})"

    def __call__(self, sample, rng=None):
        import torch

        if rng is None:
            raise ArgumentError("OneOf is random: call it with rng= or inside Compose(..., seed=...)")
        u = torch.rand((), generator=rng).item()
        i = min(int(np.searchsorted(np.cumsum(self.weights), u, side="right")), len(self.transforms) - 1)
        return _call(self.transforms[i], sample, rng)


class RandomApply:
    """Apply ``transforms`` (one or a list, in order) with probability ``p``."""

    takes_rng = True

    def __init__(self, transforms, p: float = 0.5):
        self.transforms = list(transforms) if isinstance(transforms, Sequence) else [transforms]
        if not 0.0 <= p <= 1.0:
            raise ArgumentError(f"RandomApply: p must be in [0, 1], got {p}")
        self.p = p

    def __repr__(self):
        inner = ", ".join(map(repr, self.transforms))
        return f"RandomApply([{inner}], p={self.p!r})"

    def __call__(self, sample, rng=None):
        import torch

        if rng is None:
            raise ArgumentError("RandomApply is random: call it with rng= or inside Compose(..., seed=...)")
        if torch.rand((), generator=rng).item() >= self.p:
            return sample
        for t in self.transforms:
            sample = _call(t, sample, rng)
        return sample
