"""The embedded default: scikit-learn's 8x8 handwritten digits (real data, no download, seconds per run)."""
from training.config import Config, configs
from training.data import digits

configs.data.name = "digits"
configs.data.dataset = Config(digits, test_fraction=0.2, seed=0)
configs.train.num_epochs = 40
configs.train.batch_size = 32
configs.train.optimizer.lr = 0.05
configs.train.optimizer.weight_decay = 5e-4
configs.train.scheduler.warmup_epochs = 1
configs.train.target_accuracy = 95.0
