"""Python config files composed in order, plus ``key=value`` overrides.

A config is a tree of :class:`Config` nodes with attribute access. A node may hold a callable (class or
function) and its keyword arguments; calling the node builds it, building callable children first, so
``configs.train.optimizer(model.parameters())`` reads like the paper's setup. Config files mutate the
one global tree ``configs``; loading ``configs/cifar/resnet20.py`` first runs every ``__init__.py`` from
``configs/`` down to its folder (each once), so later files override earlier ones.
"""
import ast
import difflib
import pathlib
import runpy

__all__ = ["Config", "configs", "ConfigError", "load_configs"]


class ConfigError(ValueError):
    """A config file, key or value the user gave is wrong; the message names it."""


class Config(dict):
    """A config node: keys readable as attributes; optionally a callable ``target`` built by calling."""

    def __init__(self, target=None, **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "_target", target)

    @property
    def target(self):
        return self._target

    def __getattr__(self, key):
        if key.startswith("__"):
            raise AttributeError(key)
        if key not in self:
            self[key] = Config()
        return self[key]

    def __setattr__(self, key, value):
        self[key] = value

    def __delattr__(self, key):
        del self[key]

    def __call__(self, *args, **kwargs):
        if self._target is None:
            raise ConfigError("this config node has no target to build; set it with Config(target, ...)")
        built = {k: (v() if isinstance(v, Config) and v.target is not None else v) for k, v in self.items()}
        built.update(kwargs)
        return self._target(*args, **built)

    def describe(self, indent=0):
        """Readable text of the resolved tree (what the run directory keeps as config.txt)."""
        lines = []
        pad = "  " * indent
        for key, value in self.items():
            if isinstance(value, Config):
                head = f"{pad}{key}:" + (f" {_name(value.target)}" if value.target is not None else "")
                lines.append(head)
                lines.extend(value.describe(indent + 1).splitlines())
            else:
                lines.append(f"{pad}{key}: {_name(value) if callable(value) else repr(value)}")
        return "\n".join(lines)


def _name(obj):
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


configs = Config()


def _config_chain(path, root):
    """The ``__init__.py`` files from ``root`` down to ``path``'s folder, then ``path`` itself."""
    chain = []
    folder = root
    for part in path.parent.relative_to(root).parts:
        folder = folder / part
        chain.append(folder)
    inits = [root / "__init__.py"] + [f / "__init__.py" for f in chain]
    return [p for p in inits if p.is_file() and p != path] + [path]


def load_configs(paths, overrides=(), root="configs"):
    """Reset ``configs``, run the config files in order, apply ``key=value`` overrides; return ``configs``."""
    configs.clear()
    root = pathlib.Path(root).resolve()
    done = set()
    for given in paths:
        path = pathlib.Path(given).resolve()
        if not path.is_file():
            raise ConfigError(f"config file {given!r} does not exist (expected a .py file under {root})")
        if root not in path.parents and path != root / "__init__.py":
            raise ConfigError(f"config file {given!r} is not under the configs folder {root}")
        for step in _config_chain(path, root):
            if step not in done:
                done.add(step)
                runpy.run_path(str(step), run_name=f"configs:{step.relative_to(root)}")
    for item in overrides:
        apply_override(configs, item)
    return configs


def apply_override(tree, item):
    """Set ``dotted.key=value``: the key must exist, the value (a Python literal, else a string) must have
    the existing value's type (an int may stand for a float; None accepts anything)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.num_epochs=5)")
    node, parts = tree, key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, Config) or part not in node:
            where = ".".join(parts[:depth]) or "the top level"
            options = sorted(node) if isinstance(node, Config) else []
            close = difflib.get_close_matches(part, options, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else (f"; keys there: {', '.join(options)}" if options else "")
            raise ConfigError(f"config key {key!r} does not exist ({part!r} is not in {where}{hint})")
        if depth < len(parts) - 1:
            node = node[part]
    old = node[parts[-1]]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(old, Config):
        raise ConfigError(f"config key {key!r} is a section, not a value; set one of its keys: {', '.join(old) or '(none)'}")
    if old is not None and not _compatible(old, value):
        raise ConfigError(f"config key {key!r} expects a {type(old).__name__} (now {old!r}), "
                          f"got {value!r} ({type(value).__name__})")
    node[parts[-1]] = float(value) if isinstance(old, float) and isinstance(value, int) else value


def _compatible(old, new):
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float))
    if isinstance(old, (list, tuple)):
        return isinstance(new, (list, tuple))
    return isinstance(new, type(old))
