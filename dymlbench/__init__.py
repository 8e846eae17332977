"""dymlbench: a benchmark harness for Dynamic Metric Learning (DyML).

DyML (Sun et al., CVPR 2021) learns one embedding space that retrieves correctly at several
semantic scales at once. dymlbench trains a registry of methods with one loop, evaluates them
with the DyML protocol, tunes them on a class-disjoint validation split and writes leaderboards
from the result records.
"""

from __future__ import annotations

__version__ = "0.1.0"
