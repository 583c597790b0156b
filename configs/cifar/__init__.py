"""CIFAR-10 as in the DGC paper's CIFAR experiments: SGD momentum 0.9 + Nesterov, weight decay 1e-4,
128 images per worker, lr 0.1 per worker with a 5-epoch linear warm-up then cosine decay, 200 epochs,
random crop + flip augmentation (on the training device). Data: the ImageFolder JPEG copy
(scripts/get_cifar10.sh; decoded once into a uint8 tensor file under data/cache) or torchvision's binary
release in the same folder."""
from training.config import Config, configs
from training.data import cifar

configs.data.name = "cifar10"
configs.data.dataset = Config(cifar, root="data/cifar10", num_classes=10, download=False, augment=True,
                              cache="data/cache")
configs.train.num_epochs = 200
configs.train.batch_size = 128
configs.train.optimizer.lr = 0.1
configs.train.optimizer.momentum = 0.9
configs.train.optimizer.nesterov = True
configs.train.optimizer.weight_decay = 1e-4
configs.train.scheduler.warmup_epochs = 5
configs.train.target_accuracy = 85.0
configs.train.channels_last = True
