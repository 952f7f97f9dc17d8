"""The run queue: durable entries under ``.expman/queue/``, run on Dask distributed.

Modules, lowest first: ``_store`` (the entries: JSON files under an flock;
imports no Dask), ``_queue`` (enqueue, cancel, retry, settle a run from its
branch's record), ``_worker`` (what a Dask worker executes: ``expman run NAME``
in a subprocess), ``_dask`` (``queue start``: the only module that imports
Dask distributed's client and cluster).
"""
