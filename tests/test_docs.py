"""The documentation stays true: the configuration reference is what scripts/config_reference.py generates
from configs/__init__.py (and names every default key), and every relative link and image of README.md and
docs/ resolves."""
import re
import sys

from conftest import ROOT
from training.config import Config, load_configs

sys.path.insert(0, str(ROOT / "scripts"))
import config_reference  # noqa: E402

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def flat_keys(node, prefix=""):
    """Dotted keys of a config tree's leaves and built nodes (a Config with a target is one key)."""
    keys = []
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Config) and value.target is None and value:
            keys += flat_keys(value, name + ".")
        else:
            keys.append(name)
    return keys


def test_configuration_reference_is_generated_and_complete(tmp_path):
    assert config_reference.main(["--check"]) == 0, "docs/configuration.md is stale"
    page = (ROOT / "docs" / "configuration.md").read_text()
    cfg = load_configs([str(ROOT / "configs" / "digits" / "digitsnet.py")], root=ROOT / "configs")
    missing = [k for k in flat_keys(cfg) if f"| `{k}` |" not in page]
    assert not missing, missing
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert all(not line.endswith("|  |") for line in rows), "a key without a meaning"
    changed = tmp_path / "__init__.py"
    changed.write_text(config_reference.SOURCE.read_text() + "configs.train.new_key = 3  # a key added later\n")
    assert ("train.new_key", "3", "a key added later") in config_reference.keys(changed)


def test_every_relative_link_and_image_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken, checked = [], 0
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            checked += 1
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
    assert checked >= 5, checked        # the README's plots at least: the pattern finds links
