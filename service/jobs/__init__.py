"""The job machinery: job store, Celery app and tasks, leases, delivery, operator actions.

The job store (:mod:`service.jobs.store`) is the source of truth; the broker only carries job
ids. Its schema is versioned (:mod:`service.jobs.schema`, Alembic revisions in
:mod:`service.jobs.migrations`; ``cordt1 db status`` / ``cordt1 db upgrade``).
:mod:`service.jobs.tasks` is what a worker does with a job (process, then deliver).

Import rules: uses :mod:`service.pipeline`, :mod:`service.exports`, :mod:`service.inputs`,
:mod:`dicom_node` (the SCU for delivery and C-FIND/C-MOVE for priors), :mod:`reports` and the
top-level settings and pseudonym modules; never :mod:`service.api`.
"""
