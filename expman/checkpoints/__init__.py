"""The checkpoint engine: HDF5 files, the architecture guard, the save policy.

It stands alone: nothing here knows of git, experiments or runs (a test keeps
it so). Modules, lowest first: ``_architecture`` (pure comparison), ``_state``
(flattening), ``_durable`` (atomic writes), ``_format`` (the only h5py user),
``_catalog`` (a directory of checkpoints), ``_policy`` (when to save, what to
keep), ``_writer`` (the background writer), ``_manager`` (``CheckpointManager``).
"""
