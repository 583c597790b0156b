"""ImageNet (ILSVRC-2012) in the ImageFolder layout, as in the DGC paper's ImageNet runs: 90 epochs,
SGD momentum 0.9 + Nesterov, weight decay 1e-4, 32 images per worker, lr 0.0125 per worker (0.1 per 256),
5-epoch warm-up then cosine decay."""
from training.config import Config, configs
from training.data import image_folder

configs.data.name = "imagenet"
configs.data.dataset = Config(image_folder, root="data/imagenet", image_size=224, train_dir="train", test_dir="val")
configs.data.num_workers = 4
configs.train.num_epochs = 90
configs.train.batch_size = 32
configs.train.optimizer.lr = 0.0125
configs.train.optimizer.weight_decay = 1e-4
configs.train.scheduler.warmup_epochs = 5
configs.train.target_accuracy = 75.0
configs.train.channels_last = True
