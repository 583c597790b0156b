"""PowerSGD as torch ships it (DDP's powerSGD_hook; Vogels et al. 2019), rank 4 after 2 dense steps, for a
comparison on its home ground: ``--backend torch`` only, with the dense baseline's path (no dgc exchange).
Bytes per step are estimated from the hook's own rule (a tensor is compressed when (n + m) * rank is less
than half of n * m), counting the 2 dense steps as compressed ones; its error-feedback state is not
checkpointed (a resume restarts it)."""
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState
from training.config import Config, configs

configs.train.compression = None
configs.train.torch_hook = Config(PowerSGDState, process_group=None, matrix_approximation_rank=4,
                                  start_powerSGD_iter=2, min_compression_rate=2)
