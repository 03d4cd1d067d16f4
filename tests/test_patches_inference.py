"""sliding_window_inference: integer volumes into float models, and GPU-resident volumes kept on the GPU."""

import numpy as np
import pytest
import torch

import medstack
from medstack.patches import sliding_window_inference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _ct():
    rng = np.random.default_rng(0)
    return medstack.Volume(rng.integers(-1000, 1000, (1, 20, 26, 30)).astype(np.int16), np.diag([0.7, 0.7, 2.5, 1]))


def test_int16_volume_into_a_float_model():
    torch.manual_seed(0)
    model = torch.nn.Conv3d(1, 2, 3, padding=1)
    ct = _ct()
    out = sliding_window_inference(ct, model, 16, overlap=0.5, mode="constant")
    ref = sliding_window_inference(ct.replace(data=ct.to_numpy().astype(np.float32)), model, 16, overlap=0.5,
                                   mode="constant")  # fmt: skip
    np.testing.assert_allclose(out.to_numpy(), ref.to_numpy(), rtol=1e-5, atol=1e-3)
    seen = []
    sliding_window_inference(ct, lambda x: (seen.append(x.dtype), x.float())[1], 16, dtype=None)
    assert set(seen) == {torch.int16}  # dtype=None passes the stored dtype


def test_tensor_volume_gives_the_numpy_result():
    ct = _ct()
    a = sliding_window_inference(ct, lambda x: x * 2, 12, overlap=0.25)
    b = sliding_window_inference(ct.replace(data=torch.from_numpy(ct.to_numpy())), lambda x: x * 2, 12, overlap=0.25)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), atol=1e-4)
    np.testing.assert_allclose(a.to_numpy(), ct.to_numpy() * 2.0, atol=1e-2)


@pytest.mark.gpu
@cuda
def test_gpu_volume_stays_on_the_gpu_and_equals_cpu():
    ct = _ct()
    vol = ct.replace(data=torch.from_numpy(ct.to_numpy()).cuda())
    devices = []

    def model(x):
        devices.append(x.device.type)
        return x * 2

    out = sliding_window_inference(vol, model, 12, overlap=0.5)
    assert set(devices) == {"cuda"} and out.data.device.type == "cuda"
    ref = sliding_window_inference(ct, lambda x: x * 2, 12, overlap=0.5)
    np.testing.assert_allclose(out.data.cpu().numpy(), ref.to_numpy(), atol=1e-2)
