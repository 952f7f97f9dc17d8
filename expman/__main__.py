"""``python -m expman``: the same command line as the ``expman`` script."""

from __future__ import annotations

from expman.cli import main

if __name__ == "__main__":
    main()
