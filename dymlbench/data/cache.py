"""The user cache directory: the only place the data layer writes to on its own.

Datasets are read-only. Whatever the data layer caches (the generated toy dataset, content
digests of benchmark images) goes to ``$DYMLBENCH_CACHE`` when set, else to the platform's user
cache directory (``~/.cache/dymlbench`` on Linux).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "DYMLBENCH_CACHE"
"""Environment variable that overrides the cache directory."""


def cache_dir() -> Path:
    """The dymlbench cache directory (not created).

    Returns:
        ``$DYMLBENCH_CACHE`` if set, else the platform's user cache directory for dymlbench.
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("dymlbench", appauthor=False))
