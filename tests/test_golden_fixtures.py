"""tests/data/golden/README.md describes exactly the files next to it: each has its SHA-256 in
the table (so a changed fixture cannot go unnoticed against its documented provenance) and a
section of its own."""

import hashlib
import os
import re

from golden import GOLDEN


def _readme():
    with open(os.path.join(GOLDEN, "README.md"), encoding="utf-8") as f:
        return f.read()


def test_every_fixture_has_its_documented_sha256():
    table = dict(re.findall(r"^\| `([\w.]+)` \| `([0-9a-f]{64})` \|$", _readme(), flags=re.MULTILINE))
    files = sorted(name for name in os.listdir(GOLDEN) if name != "README.md")
    assert sorted(table) == files
    for name in files:
        with open(os.path.join(GOLDEN, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == table[name], name


def test_every_fixture_has_a_section():
    headings = re.findall(r"^## (.*)$", _readme(), flags=re.MULTILINE)
    for name in os.listdir(GOLDEN):
        if name != "README.md":
            assert any(name in heading for heading in headings), name
