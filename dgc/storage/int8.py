"""Symmetric int8 quantization per output channel (row of the weight viewed as ``[out, -1]``): the simple
baseline of post-training weight quantization."""
import torch


def quantize(values, rows, num_rows):
    """``(scales, codes)`` for the float ``values`` lying in output channels ``rows`` (int64, one per value):
    an fp32 scale per channel (its largest magnitude / 127; 1 where it has none) and int8 codes in
    [-127, 127], so ``codes * scales[rows]`` is what is stored."""
    values = values.detach().reshape(-1).float()
    amax = torch.zeros(num_rows).scatter_reduce_(0, rows, values.abs(), "amax")
    scales = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    codes = torch.round(values / scales[rows]).clamp(-127, 127).to(torch.int8)
    return scales, codes


def dequantize(scales, codes, rows):
    """The float32 values :func:`quantize`'s ``(scales, codes)`` stand for."""
    return codes.float() * scales[rows]
