"""Bit packing for quantizers: codes of 1, 2 or 4 bits go on the wire 8, 4 or 2 to a byte."""
import torch


def pack(codes, bits):
    """uint8 bytes holding ``codes`` (integers in [0, 2**bits)) ``8 // bits`` to a byte, low bits first."""
    per_byte = 8 // bits
    codes = codes.to(torch.uint8).reshape(-1)
    pad = (-codes.numel()) % per_byte
    if pad:
        codes = torch.cat([codes, codes.new_zeros(pad)])
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    return (codes.view(-1, per_byte) << shifts).sum(1, dtype=torch.uint8)


def unpack(packed, bits, numel):
    """The first ``numel`` codes of :func:`pack`'s bytes, as int64."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    codes = (packed.reshape(-1, 1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:numel].long()


def packed_bytes(numel, bits):
    """Bytes :func:`pack` produces for ``numel`` codes of ``bits`` bits."""
    return -(-numel * bits // 8)
