"""A small CNN for the 8x8 digits; its 1024x128 layer is large enough to be compressed."""
from models import DigitsNet
from training.config import Config, configs

configs.model = Config(DigitsNet, num_classes=10)
