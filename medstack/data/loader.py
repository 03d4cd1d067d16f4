"""DataLoader helpers: sensible defaults, and a device prefetcher with batched GPU augmentation."""

from __future__ import annotations

import os

__all__ = ["DevicePrefetcher", "make_loader"]


def make_loader(dataset, batch_size: int = 2, *, num_workers: int | None = None, shuffle: bool = True,
                sampler=None, seed: int = 0, **kwargs):  # fmt: skip
    """A ``torch.utils.data.DataLoader`` with defaults for 3D patch training.

    workers: all cores but one (at least 1 when > 1 core); ``pin_memory`` when CUDA is available;
    ``persistent_workers`` (files stay open across epochs); ``prefetch_factor=4``; shuffling with a seeded
    generator (the items themselves are already a function of (seed, epoch, index)). Pass ``sampler=`` (e.g.
    ``DistributedSampler`` or :class:`CaseGroupedSampler`) to control the order.
    """
    import torch

    if num_workers is None:
        cores = os.cpu_count() or 1
        num_workers = max(0, cores - 1) if cores > 2 else cores - 1 if cores > 1 else 0
    opts = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "pin_memory": torch.cuda.is_available(),
        "drop_last": False,
    }
    if num_workers > 0:
        opts.update(persistent_workers=True, prefetch_factor=4)
    if sampler is not None:
        opts["sampler"] = sampler
    elif shuffle:
        opts["shuffle"] = True
        opts["generator"] = torch.Generator().manual_seed(seed)
    opts.update(kwargs)
    return torch.utils.data.DataLoader(dataset, **opts)


class DevicePrefetcher:
    """Iterate a loader, copying the NEXT batch to ``device`` (non_blocking, on a side CUDA stream) while the
    current one is used; then optionally apply a :class:`~medstack.transforms.gpu.BatchAugment` on the device.

    ``image`` is converted to float32 on the device (int16 travels as int16: half the bytes over PCIe).
    """

    def __init__(self, loader, device="cpu", *, augment=None, seed: int = 0, image_key: str = "image",
                 label_key: str = "label"):  # fmt: skip
        import torch

        self.loader, self.device = loader, torch.device(device)
        self.augment, self.image_key, self.label_key = augment, image_key, label_key
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.stream = torch.cuda.Stream() if self.device.type == "cuda" else None

    def __len__(self):
        return len(self.loader)

    def _to_device(self, batch):
        import torch

        out = {}
        for k, v in batch.items():
            out[k] = v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        return out

    def _finish(self, batch):
        import torch

        img = batch[self.image_key]
        if not img.dtype.is_floating_point:
            img = img.to(torch.float32)
        batch[self.image_key] = img
        if self.augment is not None:
            label = batch.get(self.label_key)
            res = self.augment(img, label, generator=self.generator)
            if label is not None:
                batch[self.image_key], batch[self.label_key] = res
            else:
                batch[self.image_key] = res
        return batch

    def __iter__(self):
        import torch

        it = iter(self.loader)
        nxt = None

        def preload():
            try:
                b = next(it)
            except StopIteration:
                return None
            if self.stream is not None:
                with torch.cuda.stream(self.stream):
                    return self._to_device(b)
            return self._to_device(b)

        nxt = preload()
        while nxt is not None:
            if self.stream is not None:
                torch.cuda.current_stream().wait_stream(self.stream)
            cur = nxt
            nxt = preload()
            yield self._finish(cur)
