"""Optuna sweeps of a method's hyperparameters on the class-disjoint validation split.

- :mod:`dymlbench.sweep.space`: search-space files (``sweeps/<method>.yaml``), read with the
  line of every entry and checked against the method's run configuration;
- :mod:`dymlbench.sweep.study`: storages (SQLite, any RDB URL, journal files), the seeded
  sampler, the pruners, the worker loop that runs each trial as a run of the engine, and the
  ``status`` / ``best`` / ``plots`` views of a study;
- :mod:`dymlbench.sweep.cli`: ``dymlbench sweep``.

Vocabulary: a *study* is one Optuna study (a name in a storage); a *trial* is one run of the
engine with the parameters the sampler chose, on the validation split only; a *worker* is one
process (or one ``torchrun`` group) taking trials from a study until its budget is spent.

This package imports nothing heavy on import, so that the command line stays fast.
"""
