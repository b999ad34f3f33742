"""Each golden folder's README.md describes exactly the files next to it: each has its SHA-256 in
the table (so a changed fixture cannot go unnoticed against its documented provenance) and a
section of its own. tests/data/golden/: RefineDet.PyTorch; tests/data/golden_frcnn/:
simple-faster-rcnn-pytorch."""

import hashlib
import os
import re

import pytest

from golden import GOLDEN

FOLDERS = [GOLDEN, os.path.join(os.path.dirname(GOLDEN), "golden_frcnn")]


def _readme(folder):
    with open(os.path.join(folder, "README.md"), encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("folder", FOLDERS, ids=os.path.basename)
def test_every_fixture_has_its_documented_sha256(folder):
    table = dict(re.findall(r"^\| `([\w.]+)` \| `([0-9a-f]{64})` \|$", _readme(folder), flags=re.MULTILINE))
    files = sorted(name for name in os.listdir(folder) if name != "README.md")
    assert sorted(table) == files
    for name in files:
        with open(os.path.join(folder, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == table[name], name


@pytest.mark.parametrize("folder", FOLDERS, ids=os.path.basename)
def test_every_fixture_has_a_section(folder):
    headings = re.findall(r"^## (.*)$", _readme(folder), flags=re.MULTILINE)
    for name in os.listdir(folder):
        if name != "README.md":
            assert any(name in heading for heading in headings), name
