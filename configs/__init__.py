"""Defaults every run starts from; dataset, model and DGC files override them."""
import torch

from training.config import Config, configs
from training.schedule import cosine_with_warmup

configs.seed = 42                       # every rank's random streams derive from it and the rank

configs.data.name = None                # short dataset name used in the run directory name
configs.data.dataset = None             # Config(builder, ...) returning {"train": ..., "test": ...}
configs.data.num_workers = 0            # DataLoader worker processes per rank
configs.data.prefetch_factor = 2        # batches each DataLoader worker loads ahead (with num_workers > 0)
configs.data.train_fraction = 1.0       # < 1 trains on a fixed random subset (smoke runs)
configs.data.test_fraction = 1.0        # < 1 evaluates on a fixed random subset of the test set

configs.model = None                    # Config(model class, ...): a model file of configs/ sets it

configs.train.num_epochs = 1            # epochs; the dataset files set their schedule's length
configs.train.batch_size = 32           # per worker
configs.train.backward_passes_per_step = 1  # backward passes summed per exchange (gradient accumulation)
configs.train.scale_lr_by_workers = True    # lr = optimizer.lr * number of workers (Goyal et al. 2017)
configs.train.lr_multiplier = 1.0       # lr = optimizer.lr * this; a compression file sets it (signSGD: 0.01)
configs.train.optimizer = Config(torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)  # per worker
configs.train.scheduler = Config(cosine_with_warmup, warmup_epochs=0)  # lr per step: linear warm-up, cosine
configs.train.compression = None        # None: Horovod's own dense allreduce (the baseline); else a compressor
configs.train.memory = None             # what a compressor does not send (None: dropped; configs/dgc: DGCSGDMemory)
configs.train.dense_compression = None  # tensors too small to compress: None dense fp32, or e.g. FP16Compressor
configs.train.fuse_exchange = False     # True: one collective per step and kind for all tensors (dgc/fused.py)
configs.train.hierarchical = False      # True: dense average within each host, compression only between hosts
configs.train.torch_hook = None         # --backend torch with no compression: a torch PowerSGDState (its powerSGD_hook)
configs.train.nonfinite = "skip"        # a step with NaN/Inf on any rank: "skip" it on every rank, or "stop" the run
configs.train.amp = None                # mixed precision: None, "bf16" (autocast) or "fp16" (autocast + loss scaling)
configs.train.amp_init_scale = 65536.0  # fp16: first loss scale (halved after a skipped step, doubled after 2000 good)
configs.train.compression_warmup_per_step = False   # DGC warm-up ratio updated per step instead of per epoch
configs.train.prune = None              # None: dense; configs/prune/gradual.py: gradual magnitude pruning (masks)
configs.train.init_checkpoint = None    # a checkpoint (train.py's, its run directory, or a compressed model file of
                                        # scripts/compress_model.py) whose model weights a fresh run starts from
                                        # (fine-tuning); not read on resume
configs.train.target_accuracy = 90.0    # percent; metrics.json records epochs and time to reach it
configs.train.channels_last = False      # channels_last input batches (faster convolutions on CPU)
configs.train.num_threads = 0           # torch threads per rank; 0: cores / workers on this host
configs.train.device = "auto"           # "auto": this rank's GPU if CUDA is available, else the CPU; "cpu"; "cuda"
configs.train.dist_backend = None       # --backend torch: None is "cpu:gloo,cuda:nccl" on a GPU, "gloo" on the CPU
configs.train.log_every = 1             # steps between TensorBoard step scalars
configs.train.check_replicas_every = None   # steps between replica checks (parameter checksums compared across
                                        # ranks, dgc/replicas.py); None: once per epoch, at its last step; 0: never
configs.train.measure_error_every = 100 # steps between measurements of the compression error against the
                                        # dense average (logged then; costs one dense allreduce); 0: never
