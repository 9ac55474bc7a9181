"""Schema 1: the job store as cordt1 created it before migrations (``metadata.create_all``).

Tables ``instances``, ``jobs`` (with the lease columns), ``deliveries`` and ``events``, with
their indexes and constraints, frozen here as :data:`SCHEMA_1` (later schema changes are later
revisions, never edits of this one). A store made by an earlier cordt1 has this schema (or part
of it: releases before leases lacked two columns) and is completed and stamped ``0001`` by
``cordt1 db upgrade`` instead of running this revision
(:func:`service.jobs.schema.upgrade`).

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

#: The tables of schema 1, exactly as ``metadata.create_all`` made them before migrations.
SCHEMA_1 = sa.MetaData()

sa.Table(
    "instances",
    SCHEMA_1,
    sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("series_uid", sa.String(64), nullable=False),
    sa.Column("component", sa.String(16), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("calling_ae", sa.String(16), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("own_result", sa.Boolean, nullable=False),
    sa.Column("info", sa.Text, nullable=False),
    sa.Index("ix_instances_series_uid", "series_uid"),
    sa.Index("ix_instances_study_uid", "study_uid"),
)
sa.Table(
    "jobs",
    SCHEMA_1,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("patient_key", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("complete", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("series", sa.Text, nullable=False),
    sa.Column("n_instances", sa.Integer, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("lease_owner", sa.String(128), nullable=False),
    sa.Column("lease_expires_at", sa.Float),
    sa.Index("ix_jobs_patient_key", "patient_key"),
    sa.Index("ix_jobs_state", "state"),
    sa.Index("ix_jobs_study_uid", "study_uid"),
)
sa.Table(
    "deliveries",
    SCHEMA_1,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("run", sa.Integer, nullable=False),
    sa.Column("sop_instance_uid", sa.String(64), nullable=False),
    sa.Column("destination", sa.String(300), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.UniqueConstraint("job_id", "run", "sop_instance_uid", "destination", name="uq_delivery"),
    sa.Index("ix_deliveries_job_id", "job_id"),
)
sa.Table(
    "events",
    SCHEMA_1,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Index("ix_events_job_id", "job_id"),
    sa.Index("ix_events_time", "time"),
)


def upgrade() -> None:
    """Create the four tables of schema 1 and their indexes."""
    SCHEMA_1.create_all(op.get_bind(), checkfirst=False)
