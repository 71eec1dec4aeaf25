"""bnlib reads as a table of contents promises: sections 1-8 in order, each with its rule, and a
contents table in the module docstring that lists every public name, the section it is in and
the first notebook that calls it. Notebooks call bnlib; they do not define its names again."""
import ast
import json
import re
from pathlib import Path

import bnlib

ROOT = Path(__file__).resolve().parent.parent
SOURCE = (ROOT / "bnlib.py").read_text()
SECTIONS = ["The math of batch normalization", "Layers", "Models and training", "Checking tools",
            "Data", "Helpers of one notebook's experiment", "Plots and widgets", "Exercise checks"]


def section_starts():
    """{section number: line number} of the '# N. Title' headers."""
    return {int(m.group(1)): SOURCE[:m.start()].count("\n") + 1
            for m in re.finditer(r"^# (\d)\. (.+)$", SOURCE, re.M)}


def public_definitions():
    """[(name, line)] of every public top-level function, class and constant, in file order."""
    rows = []
    for node in ast.parse(SOURCE).body:
        name = getattr(node, "name", None)
        if name is None and isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        if name and not name.startswith("_"):
            rows.append((name, node.lineno))
    return rows


def notebook_code():
    """{two-digit notebook number: the source of its code cells}, in course order."""
    code = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code[path.name[:2]] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return code


def contents_table():
    """[(name, section, notebook)] as written in bnlib's docstring."""
    table = bnlib.__doc__.split("Contents (public name")[1]
    return [tuple(m.groups()) for m in re.finditer(r"^    (\w+) +(\d) +(\d\d|-)$", table, re.M)]


def test_the_eight_sections_come_in_order_each_with_a_rule():
    starts = section_starts()
    assert sorted(starts) == list(range(1, 9))
    assert [starts[k] for k in range(1, 9)] == sorted(starts.values())
    lines = SOURCE.splitlines()
    for number, title in enumerate(SECTIONS, start=1):
        header = lines[starts[number] - 1]
        assert header.startswith(f"# {number}. {title}"), header
        rule = lines[starts[number]]
        assert rule.startswith("# ") and len(rule) > 30, f"section {number} has no one-line rule"


def test_the_contents_table_lists_every_public_name_in_file_order():
    assert [row[0] for row in contents_table()] == [name for name, _ in public_definitions()]


def test_the_contents_table_gives_each_names_section():
    starts = section_starts()
    defined_in = {name: max(k for k, line in starts.items() if line <= lineno)
                  for name, lineno in public_definitions()}
    assert {name: int(sec) for name, sec, _ in contents_table()} == defined_in


def test_the_contents_table_gives_the_first_notebook_that_calls_each_name():
    code = notebook_code()
    for name, _, notebook in contents_table():
        callers = [nb for nb, src in code.items() if re.search(rf"\bbnlib\.{name}\b", src)]
        assert notebook == (callers[0] if callers else "-"), name


def test_no_notebook_defines_a_name_bnlib_already_has():
    names = {name for name, _ in public_definitions()}
    for nb, src in notebook_code().items():
        defined = set(re.findall(r"^(?:def|class) (\w+)", src, re.M))
        assert not defined & names, f"notebook {nb} redefines {defined & names}"


def test_the_docstring_names_the_import_time_effect_and_how_to_undo_it():
    doc = bnlib.__doc__
    assert "ONE thread" in doc and "threadpool_limits" in doc
    assert "threadpool_limits(limits=1" in SOURCE
