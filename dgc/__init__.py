"""Deep Gradient Compression (Lin et al., ICLR 2018) for PyTorch + Horovod.

dgc.compression  compressors (the math: selection, encoding, warm-up)
dgc.memory       residual / momentum-correction memories
dgc.optim        DGCSGD, the optimizer that pairs with DGCSGDMemory
dgc.communication, dgc.horovod  the exchange (Horovod communicator and DistributedOptimizer)
"""
