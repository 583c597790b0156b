"""ResNet-20 for CIFAR (He et al. 2016, §4.2)."""
from models import resnet20
from training.config import Config, configs

configs.model = Config(resnet20, num_classes=configs.data.dataset.num_classes)
