"""The hierarchical exchange (on top of configs/dgc/, e.g. with compact.py): gradients are averaged densely
among the ranks of each host (fast local links), only each host's leader compresses and exchanges with the
other hosts, then broadcasts the average to its host; the compressed traffic grows with hosts, not ranks.
Hosts are those of ``horovodrun -H host1:2,host2:2``.

Each host sends k values, not each rank, so an update carries hosts x k values instead of ranks x k: to keep
the flat exchange's density (and accuracy), multiply compress_ratio by the ranks per host; the bytes between
hosts are then no more than the flat exchange's, in one exchange per host pair instead of one per rank pair,
and each leader selects from its host's averaged gradient."""
from training.config import configs

configs.train.hierarchical = True
configs.train.fuse_exchange = True
