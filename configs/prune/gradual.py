"""Gradual magnitude pruning while training (Zhu & Gupta 2017, eq. 1; training/prune.py): conv and linear
weights pruned to 80% on the cubic schedule from the first epoch to three quarters of the run (the rest
recovers at 80%), masks updated every 10 optimizer steps, each layer to the same sparsity. To fine-tune a
trained model, add train.init_checkpoint=PATH and a lower lr (e.g. train.optimizer.lr=0.01
train.scheduler.warmup_epochs=0)."""
from training.config import Config, configs
from training.prune import GradualPruner

configs.train.prune = Config(GradualPruner, final_sparsity=0.8, initial_sparsity=0.0, start_epoch=0,
                             end_epoch=None, frequency=10, scope="layer")
