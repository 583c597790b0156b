"""Deep Gradient Compression (Lin et al., ICLR 2018) and its relatives for PyTorch + Horovod.

dgc.compressors  one compressor per file (the math: selection, encoding, warm-up); dgc.compression re-exports
dgc.memory       residual / momentum-correction memories (what is not sent)
dgc.exchange     the per-tensor pipeline every backend shares
dgc.communication, dgc.horovod, dgc.inprocess  how payloads travel (Horovod, or N workers in one process)
dgc.optim        the plain step for momentum-corrected tensors, DGCSGD
"""
