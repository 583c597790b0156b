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


SPLIT_FROM = "47f919cd709e280641f3fdc2dbc4746da39c5542"
"""The last commit whose README held everything (before the front page moved its reference and results to docs/)."""


def test_no_figure_of_the_long_readme_was_lost_in_the_move():
    """Every line of the long README that holds a figure (a digit) is in today's README or a docs/ page, word
    for word (links rewritten relative to docs/), so moving the content lost no number."""
    import os
    import subprocess

    import pytest
    shown = subprocess.run(["git", "show", f"{SPLIT_FROM}:README.md"], cwd=ROOT, capture_output=True, text=True)
    if shown.returncode:
        pytest.skip(f"this clone lacks commit {SPLIT_FROM[:10]} (shallow?): {shown.stderr.strip()[:100]}")
    text = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))

    def relinked(line):
        return LINK.sub(lambda m: m.group(0) if re.match(r"[a-z]+:|#", m.group(1)) else
                        m.group(0).replace(m.group(1), os.path.relpath(ROOT / m.group(1), ROOT / "docs")), line)
    lost = [line for line in shown.stdout.splitlines() if re.search(r"\d", line) and not line.startswith("#")
            and line not in text and relinked(line) not in text]
    assert not lost, lost[:5]
