"""Alembic migrations of the job store, shipped in the package and run by cordt1 itself.

Nobody needs an ``alembic.ini``: :mod:`service.jobs.schema` points Alembic at this folder and
hands it the connection (``cordt1 db upgrade``; an empty store is created at the newest schema
when the service opens it). Revisions are numbered ``0001``, ``0002``, ... and that number is
the *schema version* cordt1 prints. To add one, copy the newest file of ``versions/``, give it
the next number as ``revision`` and the previous one as ``down_revision``, write ``upgrade()``
(and the matching change of :mod:`service.jobs.store`), and extend ``tests/test_migrations.py``.
"""
