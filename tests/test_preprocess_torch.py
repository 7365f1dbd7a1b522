"""Batch preprocessing in torch equals ovclip.preprocess (Pillow) bit for bit: sizes up and down, crops, bands."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ovclip.data.builtin import builtin_eval
from ovclip.errors import OvclipError
from ovclip.preprocess import PreprocessConfig, preprocess, preprocess_gray_batch, resize_and_crop
from ovclip.preprocess_torch import TorchPreprocess, pillow_taps

RNG = np.random.default_rng(3)


@pytest.mark.parametrize(
    "h,w,size,resample",
    [
        (28, 28, 224, "bicubic"),  # Fashion-MNIST -> the built-in model's input
        (28, 28, 56, "bicubic"),
        (30, 45, 32, "bicubic"),  # landscape: horizontal resize + crop
        (45, 30, 32, "bicubic"),  # portrait
        (100, 77, 32, "bicubic"),  # shrinking: the kernel widens
        (13, 200, 64, "bicubic"),
        (5, 3, 64, "bicubic"),  # tiny
        (64, 64, 64, "bicubic"),  # no resize at all
        (64, 65, 64, "bicubic"),  # one axis resized, the other only cropped
        (300, 451, 224, "bicubic"),
        (40, 33, 24, "bilinear"),
    ],
)
def test_resize_equals_pillow(h, w, size, resample):
    cfg = PreprocessConfig(size=size, resample=resample)
    x = RNG.integers(0, 256, (3, h, w), dtype=np.uint8)
    ours = TorchPreprocess(h, w, cfg).resize(torch.from_numpy(x)).numpy()
    ref = np.stack([np.asarray(resize_and_crop(Image.fromarray(a, "L"), cfg)) for a in x])
    np.testing.assert_array_equal(ours, ref)


def test_colour_bands_equal_preprocess():
    cfg = PreprocessConfig(size=40)
    rgb = RNG.integers(0, 256, (2, 50, 70, 3), dtype=np.uint8)
    bands = TorchPreprocess(50, 70, cfg).resize(torch.from_numpy(rgb).permute(0, 3, 1, 2))  # (N, 3, 40, 40)
    for i in range(2):
        ref = np.asarray(resize_and_crop(Image.fromarray(rgb[i]), cfg)).transpose(2, 0, 1)
        np.testing.assert_array_equal(bands[i].numpy(), ref)


def test_gray_equals_shipped_pipeline():
    d = builtin_eval()
    cfg = PreprocessConfig()
    sel = np.arange(0, 2000, 100)
    ours = TorchPreprocess(28, 28, cfg).gray(torch.from_numpy(d.gray[sel])).numpy()
    np.testing.assert_array_equal(ours, preprocess_gray_batch(d.gray[sel], cfg))
    np.testing.assert_array_equal(ours[0], preprocess(Image.fromarray(d.gray[sel[0]], "L"), cfg))
    assert ours.dtype == np.float32 and ours.shape == (20, 3, 224, 224)


def test_taps_are_normalised_fixed_point():
    taps = pillow_taps(28, 224)
    assert taps.shape == (224, 28)
    sums = taps.sum(axis=1)
    assert np.all(np.abs(sums - (1 << 22)) <= 4)  # each row sums to one in 22-bit fixed point, up to rounding
    assert (np.count_nonzero(taps, axis=1) <= 5).all()  # bicubic upscaling: at most 4-5 taps per output


def test_bad_input():
    tp = TorchPreprocess(28, 28, PreprocessConfig())
    with pytest.raises(OvclipError, match=r"images are \(27, 28\); this preprocessor was built for \(28, 28\)"):
        tp.resize(torch.zeros((1, 27, 28), dtype=torch.uint8))
    with pytest.raises(OvclipError, match="supports bicubic, bilinear resampling, not 'lanczos'"):
        TorchPreprocess(28, 28, PreprocessConfig(size=56, resample="lanczos"))
