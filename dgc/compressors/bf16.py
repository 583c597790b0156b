"""bf16 (torch DDP's ``bf16_compress_hook``): fp32's range with 8 bits of mantissa, 2 bytes per value."""
import torch

from dgc.compressors.fp16 import FP16Compressor


class BF16Compressor(FP16Compressor):
    """:class:`FP16Compressor` with bfloat16 on the wire."""

    wire_dtype = torch.bfloat16
