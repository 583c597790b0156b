"""Deep Gradient Compression (Lin et al. 2018): send 0.1% of each large gradient per step, threshold from a
1% sample, momentum correction + momentum factor masking (§3.2), local gradient clipping (max L2 norm of
each averaged gradient tensor), no warm-up unless a warm-up file (wm5.py, paper_warmup.py) is added.
The memory's momentum and Nesterov setting follow the optimizer's (configs/__init__.py: SGD 0.9, Nesterov)."""
from dgc.compressors.dgc import DGCCompressor
from dgc.memory import DGCSGDMemory
from training.config import Config, configs

configs.train.compression = Config(
    DGCCompressor, compress_ratio=0.001, sample_ratio=0.01, strided_sample=True, compress_upper_bound=1.3,
    compress_lower_bound=0.8, max_adaptation_iters=10, resample=True, fp16_values=False, int32_indices=False,
    warmup_epochs=-1, warmup_coeff=None, min_compress_numel=1024)
configs.train.memory = Config(DGCSGDMemory, gradient_clipping=5.0, momentum_masking=True)
