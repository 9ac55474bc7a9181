"""Alembic environment: runs the revisions on the connection :mod:`service.jobs.schema` gives.

Only :func:`service.jobs.schema.upgrade` (``cordt1 db upgrade``) and the automatic creation of
an empty store run it; the connection arrives in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "cordt1 runs its job store migrations itself: use `cordt1 db upgrade`, "
        "not the alembic command"
    )
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
