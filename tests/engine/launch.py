"""The dymlbench command line with the throwaway engine-test methods registered.

For subprocess tests (``torchrun tests/engine/launch.py run engine-pair ...``), which cannot
see the methods a pytest fixture registers in its own process.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    """Register the throwaway methods, then run the command line."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import engine_methods

    from dymlbench import registry
    from dymlbench.cli import main as cli_main

    engine_methods.register(registry.METHODS)
    cli_main()


if __name__ == "__main__":
    main()
