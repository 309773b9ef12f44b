"""The results tables in README.md, docs/results.md and docs/benchmarks.md are the saved outputs of the benchmarks
(benchmarks/regenerate.py): every table the script knows has its block, and each block holds
exactly the ``benchmarks/results/<name>.md`` it was copied from, so no figure is typed by hand."""

from __future__ import annotations

import sys

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import regenerate  # noqa: E402


def test_every_table_has_its_block_holding_its_saved_output():
    texts = {path.name: path.read_text() for path in regenerate.DOCS}
    for table in regenerate.TABLES:
        blocks = [m.group(2) for text in texts.values() for m in regenerate.block(table.name).finditer(text)]
        assert blocks, f"no <!-- table:{table.name} --> block in {[p.name for p in regenerate.DOCS]}"
        made = regenerate.RESULTS / f"{table.name}.md"
        if made.is_file():  # made by the script: the block is its output, as splice() copies it
            saved = made.read_text().strip() + "\n"
            assert all(b == saved for b in blocks), f"{table.name}: block differs from {made}; run benchmarks/regenerate.py --splice-only"
        assert table.command[0].startswith("benchmarks/") and (ROOT / table.command[0]).is_file(), table.command
