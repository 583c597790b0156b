"""VGG-16 with BatchNorm for CIFAR (Simonyan & Zisserman 2015); weight decay 5e-4 as usual for VGG."""
from models import vgg16
from training.config import Config, configs

configs.model = Config(vgg16, num_classes=configs.data.dataset.num_classes)
configs.train.optimizer.weight_decay = 5e-4
