"""ResNet-50 from torchvision (no pretrained weights)."""
from models import torchvision_model
from training.config import Config, configs

configs.model = Config(torchvision_model, name="resnet50", num_classes=1000)
