"""The results tables in README.md, docs/results.md and docs/benchmarks.md are the saved outputs of the benchmarks
(benchmarks/regenerate.py): every marked block names a table the script knows and holds exactly the
``benchmarks/results/<name>.md`` it was copied from, and every saved table has its block, so no figure
between markers is typed by hand. A table not made yet has no block (its section says what was
measured and which script makes it); a marked block without a saved output fails."""

from __future__ import annotations

import re
import sys

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import regenerate  # noqa: E402

MARKER = re.compile(r"^<!-- (/?)table:(.*?) -->$", re.M)


def test_every_marked_block_holds_its_saved_output():
    known = {t.name for t in regenerate.TABLES}
    for path in regenerate.DOCS:
        text = path.read_text()
        opened = [m.group(2) for m in MARKER.finditer(text) if not m.group(1)]
        closed = [m.group(2) for m in MARKER.finditer(text) if m.group(1)]
        assert sorted(opened) == sorted(closed), f"{path.name}: unpaired markers {sorted(set(opened) ^ set(closed))}"
        for name in opened:
            assert name in known, f"{path.name}: <!-- table:{name} --> is no table of benchmarks/regenerate.py's TABLES"
            made = regenerate.RESULTS / f"{name}.md"
            assert made.is_file(), f"{path.name}: <!-- table:{name} --> has no saved output {made}: a table typed by hand; remove it or run its benchmark"
            blocks = [m.group(2) for m in regenerate.block(name).finditer(text)]
            assert blocks and all(b == made.read_text().strip() + "\n" for b in blocks), (
                f"{path.name}: {name}'s block differs from {made}; run benchmarks/regenerate.py --splice-only"
            )


def test_every_saved_table_has_its_block_and_every_table_its_script():
    texts = [path.read_text() for path in regenerate.DOCS]
    for table in regenerate.TABLES:
        if (regenerate.RESULTS / f"{table.name}.md").is_file():
            assert any(regenerate.block(table.name).search(text) for text in texts), f"no <!-- table:{table.name} --> block for its saved output"
        assert table.command[0].startswith("benchmarks/") and (ROOT / table.command[0]).is_file(), table.command
