"""Rewrite the contents table in bnlib's docstring from the module itself.

    .venv/bin/python tools/bnlib_contents.py          # rewrite bnlib.py in place
    .venv/bin/python tools/bnlib_contents.py --check  # exit 1 if the table is out of date

Each row is a public top-level name (file order), the section it is defined in and the first
notebook that calls it as bnlib.<name> ("-" when none does). tests/test_bnlib_layout.py holds
the table to the same rules; run this after adding, moving or renaming a public name.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import test_bnlib_layout as layout  # noqa: E402  (the rules the table is held to)

BNLIB = ROOT / "bnlib.py"
HEADER = "    name                              sec first used in notebook\n"


def rows():
    """[(name, section, notebook)]: the table tests/test_bnlib_layout.py demands, from its helpers."""
    starts = layout.section_starts()
    code = layout.notebook_code()
    table = []
    for name, lineno in layout.public_definitions():
        section = max(k for k, line in starts.items() if line <= lineno)
        callers = [nb for nb, src in code.items() if re.search(rf"\bbnlib\.{name}\b", src)]
        table.append((name, section, callers[0] if callers else "-"))
    return table


def rewrite(source):
    """`source` (bnlib.py's text) with its contents table rewritten."""
    start = source.index(HEADER) + len(HEADER)
    end = source.index('"""\nimport ', start)
    body = "".join(f"    {name:<34}{section:<4}{nb}\n" for name, section, nb in rows())
    return source[:start] + body + "\n" * (source[start:end].endswith("\n\n")) + source[end:]


if __name__ == "__main__":
    old = BNLIB.read_text()
    new = rewrite(old)
    if "--check" in sys.argv:
        sys.exit(0 if new == old else "bnlib's contents table is out of date: run tools/bnlib_contents.py")
    BNLIB.write_text(new)
    print("contents table:", "unchanged" if new == old else "rewritten")
