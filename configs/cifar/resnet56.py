"""ResNet-56 for CIFAR (He et al. 2016, §4.2)."""
from models import resnet56
from training.config import Config, configs

configs.model = Config(resnet56, num_classes=configs.data.dataset.num_classes)
