"""Rewrite the contents table in bnlib's docstring from the module itself.

    .venv/bin/python tools/bnlib_contents.py          # rewrite bnlib.py in place
    .venv/bin/python tools/bnlib_contents.py --check  # exit 1 if the table is out of date

Each row is a public top-level name (file order), the section it is defined in and the first
notebook that calls it as bnlib.<name> ("-" when none does). tests/test_bnlib_layout.py holds
the table to the same rules; run this after adding, moving or renaming a public name.
"""
import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BNLIB = ROOT / "bnlib.py"
HEADER = "    name                              sec first used in notebook\n"


def rows(source):
    """[(name, section, notebook)] for every public top-level definition in `source`."""
    starts = [(int(m.group(1)), source[:m.start()].count("\n") + 1)
              for m in re.finditer(r"^# (\d)\. ", source, re.M)]
    code = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code[path.name[:2]] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    table = []
    for node in ast.parse(source).body:
        name = getattr(node, "name", None)
        if name is None and isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        if not name or name.startswith("_"):
            continue
        section = max(k for k, line in starts if line <= node.lineno)
        callers = [nb for nb, src in code.items() if re.search(rf"\bbnlib\.{name}\b", src)]
        table.append((name, section, callers[0] if callers else "-"))
    return table


def rewrite(source):
    """`source` with its contents table replaced by one built from `source`."""
    start = source.index(HEADER) + len(HEADER)
    end = source.index('"""\nimport ', start)
    body = "".join(f"    {name:<34}{section:<4}{nb}\n" for name, section, nb in rows(source))
    return source[:start] + body + "\n" * (source[start:end].endswith("\n\n")) + source[end:]


if __name__ == "__main__":
    old = BNLIB.read_text()
    new = rewrite(old)
    if "--check" in sys.argv:
        sys.exit(0 if new == old else "bnlib's contents table is out of date: run tools/bnlib_contents.py")
    BNLIB.write_text(new)
    print("contents table:", "unchanged" if new == old else "rewritten")
