"""Experiments as git branches: workspace, runs, records, and the one git module.

Modules, lowest first: ``_names`` (refs), ``_config`` (``expman.toml``),
``_gitrepo`` (the only module that runs git), ``_lock`` (one run per
experiment), ``_records`` (run records and trailers), ``_runtime`` (what a
training script sees), ``_workspace`` (``Workspace``), ``_runner``
(``run_experiment``).
"""
