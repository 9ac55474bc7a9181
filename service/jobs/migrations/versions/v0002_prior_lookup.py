"""Schema 2: find a patient's prior exam and studies by query (columns and indexes).

``jobs.study_date`` and ``jobs.study_time`` hold the StudyDate and StudyTime of the exam the
job's result summary describes (empty strings when the header had none; NULL while the job has
no result summary). The index ``ix_jobs_prior`` (patient key, state, date, time) lets
:meth:`service.jobs.store.JobStore.prior_summary` find the patient's latest earlier finished
exam with one query instead of loading every finished job. Existing jobs are filled in from
their stored result.

``instances.patient_key`` (indexed with the study) is the pseudonymous patient key each
instance's ``info`` already held: :meth:`service.jobs.store.JobStore.patient_study_uids`
finds a patient's studies without reading every instance. Filled in by one UPDATE reading
``info``.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: DICOM DA/TM are compared as text: byte order on PostgreSQL too (as Python compares them).
_MOMENT_TYPE = sa.String(32).with_variant(sa.String(32, collation="C"), "postgresql")
_BATCH_ROWS = 500


def _moment(result_text: str) -> tuple[str | None, str | None]:
    """(StudyDate, StudyTime) of a stored result's summary; (None, None) without a summary."""
    try:
        result = json.loads(result_text)
    except ValueError:
        return None, None
    summary = result.get("summary") if isinstance(result, dict) else None
    if not isinstance(summary, dict):
        return None, None
    exam = summary.get("exam") or {}
    if not isinstance(exam, dict):
        exam = {}
    return str(exam.get("study_date") or "")[:32], str(exam.get("study_time") or "")[:32]


def upgrade() -> None:
    """Add the columns, fill them from the stored results and instance infos, add indexes."""
    op.add_column("jobs", sa.Column("study_date", _MOMENT_TYPE, nullable=True))
    op.add_column("jobs", sa.Column("study_time", _MOMENT_TYPE, nullable=True))
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.Integer),
        sa.column("result", sa.Text),
        sa.column("study_date", _MOMENT_TYPE),
        sa.column("study_time", _MOMENT_TYPE),
    )
    conn = op.get_bind()
    last_id = -1
    while True:
        rows = conn.execute(
            sa.select(jobs.c.id, jobs.c.result)
            .where(jobs.c.id > last_id)
            .order_by(jobs.c.id)
            .limit(_BATCH_ROWS)
        ).all()
        if not rows:
            break
        last_id = rows[-1].id
        filled = []
        for row in rows:
            study_date, study_time = _moment(row.result)
            if study_date is not None:
                filled.append({"b_id": row.id, "b_date": study_date, "b_time": study_time})
        if filled:
            conn.execute(
                jobs.update()
                .where(jobs.c.id == sa.bindparam("b_id"))
                .values(study_date=sa.bindparam("b_date"), study_time=sa.bindparam("b_time")),
                filled,
            )
    op.create_index("ix_jobs_prior", "jobs", ["patient_key", "state", "study_date", "study_time"])
    op.add_column(
        "instances",
        sa.Column("patient_key", sa.String(64), nullable=False, server_default=""),
    )
    read_key = (
        "json_extract(info, '$.patient_key')"
        if conn.dialect.name == "sqlite"
        else "CAST(info AS json) ->> 'patient_key'"
    )
    op.execute(f"UPDATE instances SET patient_key = COALESCE({read_key}, '')")
    op.create_index("ix_instances_patient_key", "instances", ["patient_key", "study_uid"])


def downgrade() -> None:
    """Back to schema 1 (the columns and the indexes go; nothing else is lost)."""
    op.drop_index("ix_instances_patient_key", table_name="instances")
    op.drop_column("instances", "patient_key")
    op.drop_index("ix_jobs_prior", table_name="jobs")
    op.drop_column("jobs", "study_time")
    op.drop_column("jobs", "study_date")
