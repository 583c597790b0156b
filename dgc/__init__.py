"""Deep Gradient Compression (Lin et al., ICLR 2018) and its relatives for PyTorch + Horovod.

dgc.compressors  one compressor per file (the math: selection, encoding, warm-up); dgc.compression re-exports
dgc.memory       residual / momentum-correction memories (what is not sent)
dgc.exchange     the per-tensor pipeline every backend shares
dgc.communication, dgc.horovod, dgc.torch, dgc.inprocess  how payloads travel (Horovod, torch.distributed
                 as a DDP communication hook, or N workers in one process)
dgc.fused        all of a step's payloads in one collective per kind
dgc.amp          the loss scale for fp16 autocast
dgc.optim        the plain step for momentum-corrected tensors, DGCSGD
dgc.storage      the trained model compressed for storage (Deep Compression: pruning, k-means, Huffman; low
                 rank; int8), independent of the exchange
"""
