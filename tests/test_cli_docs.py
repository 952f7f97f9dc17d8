"""docs/cli.md's exit-code table is the code's."""

from __future__ import annotations

from pathlib import Path

from expman.cli._exit import EXIT_CODES
from expman.experiments._supervisor import FORWARDED_SIGNALS

DOC = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()


def test_every_exit_code_is_documented_with_its_meaning() -> None:
    rows = {
        int(cells[0]): cells[1]
        for line in DOC.splitlines()
        if line.startswith("| ") and line[2].isdigit()
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    for _, code, meaning in EXIT_CODES:
        assert code in rows, code
        assert meaning.split(" (")[0] in rows[code], (code, meaning)
    signals = {128 + signum for signum in FORWARDED_SIGNALS}  # expman run, after a signal
    assert set(rows) == {0} | signals | {code for _, code, _ in EXIT_CODES}
