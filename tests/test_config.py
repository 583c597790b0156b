"""Config composition: files in order (parents' __init__.py first), overrides, clear errors."""
import pytest
import torch

from conftest import ROOT
from training.config import Config, ConfigError, apply_override, load_configs

CONFIGS = ROOT / "configs"


def load(*items):
    files = [str(CONFIGS / i) for i in items if "=" not in i]
    return load_configs(files, [i for i in items if "=" in i], root=CONFIGS)


def test_files_compose_in_order_with_parent_defaults():
    cfg = load("cifar/resnet20.py")
    assert cfg.seed == 42                                  # configs/__init__.py
    assert cfg.train.num_epochs == 200 and cfg.data.name == "cifar10"   # configs/cifar/__init__.py
    assert cfg.model.target.__name__ == "resnet20" and cfg.train.compression is None
    cfg = load("cifar/resnet20.py", "dgc/wm5.py", "dgc/fp16.py", "dgc/int32.py")
    comp = cfg.train.compression
    assert (comp.compress_ratio, comp.warmup_epochs, comp.fp16_values, comp.int32_indices) == (0.001, 5, True, True)
    assert cfg.train.optimizer.target.__name__ == "SGD" and cfg.train.optimizer.lr == 0.1
    assert cfg.train.memory.target.__name__ == "DGCSGDMemory" and "momentum" not in cfg.train.memory


def test_reloading_starts_from_scratch():
    load("cifar/resnet20.py", "dgc/wm5.py")
    assert load("cifar/resnet20.py").train.compression is None


def test_overrides_apply_after_files_and_keep_types():
    cfg = load("digits/digitsnet.py", "train.num_epochs=3", "train.optimizer.lr=1", "data.name=other")
    assert cfg.train.num_epochs == 3 and cfg.data.name == "other"
    assert cfg.train.optimizer.lr == 1.0 and isinstance(cfg.train.optimizer.lr, float)


@pytest.mark.parametrize("override,message", [
    ("train.num_epoch=3", "train.num_epoch.*did you mean num_epochs"),
    ("nothing.here=1", "nothing.here"),
    ("train.num_epochs=abc", "train.num_epochs.*expects a int"),
    ("train.optimizer.nesterov=1", "train.optimizer.nesterov.*expects a bool"),
    ("train.optimizer=3", "section"),
    ("=3", "key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load("digits/digitsnet.py", override)


def test_missing_config_file_is_named():
    with pytest.raises(ConfigError, match="nope.py.*does not exist"):
        load("cifar/nope.py")


def test_config_node_builds_children_first():
    node = Config(torch.nn.Sequential)
    cfg = Config(dict, a=1, inner=Config(dict, b=2), plain=Config(c=3))
    assert cfg() == {"a": 1, "inner": {"b": 2}, "plain": {"c": 3}}
    assert cfg(a=5)["a"] == 5
    with pytest.raises(ConfigError):
        Config()()
    assert isinstance(node(), torch.nn.Sequential)


def test_describe_lists_targets_and_values():
    text = load("cifar/resnet20.py", "dgc/wm5.py").describe()
    assert "compression: dgc.compressors.dgc.DGCCompressor" in text and "warmup_epochs: 5" in text


def test_apply_override_none_accepts_any_type():
    cfg = Config(x=None)
    apply_override(cfg, "x=[1, 2]")
    assert cfg.x == [1, 2]
