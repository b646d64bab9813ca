"""tools/conformance_table.py: cells say only what tests decided, the README
block is the only thing written, and every conformance marker in the suite
names a cell of the table (a typo would otherwise vanish from it)."""

import importlib.util
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location("conformance_table", os.path.join(ROOT, "tools", "conformance_table.py"))
ct = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ct)


def test_cells():
    assert ct.cell([]) == "—"
    assert ct.cell([{"test": "a", "outcome": "passed"}, {"test": "b", "outcome": "passed"}]) == "pass (2)"
    assert ct.cell([{"test": "a", "outcome": "passed"}, {"test": "b", "outcome": "failed"}]) == "**FAIL** (1 of 2)"
    assert ct.cell([{"test": "a", "outcome": "skipped"}]) == "skip"


def test_render_and_write_only_the_block(tmp_path):
    res = {"kcat|codecs": [{"test": "t", "outcome": "passed"}], "sarama|admin": [{"test": "u", "outcome": "failed"}]}
    table = ct.render(res, "2026-12-02", "x86_64", {"kcat": "1.7.1"})
    rows = {r.split("|")[1].strip(): r for r in table.splitlines() if r.startswith("| ") and "client" not in r}
    assert "pass (1)" in rows["kcat 1.7.1"] and "**FAIL** (1 of 1)" in rows["sarama"]
    assert rows["aiokafka"].count("—") == len(ct.FEATURES)
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{ct.BEGIN}\nold\n{ct.END}\nafter\n")
    ct.write_readme(table, str(readme))
    assert readme.read_text() == f"before\n{ct.BEGIN}\n{table}\n{ct.END}\nafter\n"
    with pytest.raises(SystemExit, match="cells the table does not have"):
        ct.render({"kcat|typo": []}, "d", "m", {})


def test_every_marker_names_a_cell_and_the_readme_has_the_block():
    pat = re.compile(r'conformance\(client="([^"]+)", feature="([^"]+)"\)')
    found = set()
    for name in os.listdir(os.path.join(ROOT, "tests", "kafka")):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, "tests", "kafka", name)) as f:
                found |= set(pat.findall(f.read()))
    assert found, "no conformance markers found"
    bad = {(c, f) for c, f in found if c not in ct.CLIENTS or f not in ct.FEATURES}
    assert not bad
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    assert text.count(ct.BEGIN) == 1 and text.count(ct.END) == 1
