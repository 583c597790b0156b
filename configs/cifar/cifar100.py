"""CIFAR-100 instead of CIFAR-10: give it after the model file (num_classes follows)."""
from training.config import configs

configs.data.name = "cifar100"
configs.data.dataset.root = "data/cifar100"
configs.data.dataset.num_classes = 100
configs.model.num_classes = 100
configs.train.target_accuracy = 60.0
