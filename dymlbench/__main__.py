"""Entry point for ``python -m dymlbench`` (and ``torchrun -m dymlbench``)."""

from __future__ import annotations

from dymlbench.cli import main

if __name__ == "__main__":
    main()
