"""Research exports: BIDS derivatives, the group-level table, and `cordt1 process` (offline).

Import rules: uses :mod:`service.pipeline` and :mod:`service.inputs` (and below them
:mod:`processing`), the settings and the pseudonym key; never :mod:`service.jobs` or
:mod:`service.api`.
"""
