"""ix_jobs_pending: start-up finds pending jobs without reading the whole jobs table

Revision ID: 0009
Revises: 0008

Every start looks for jobs left pending by runs that died (Store.abandon_pending). Without an index that
was a scan of every stored job: 25 s at ten million. SQLite and PostgreSQL index only the pending rows
(a partial index: a handful of entries, so keeping it costs the writer next to nothing); MariaDB has no
partial indexes and indexes (state, run).
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        op.create_index("ix_jobs_pending", "jobs", ["state", "run"])
    else:
        op.create_index("ix_jobs_pending", "jobs", ["run"], sqlite_where=sa.text("state = 'pending'"),
                        postgresql_where=sa.text("state = 'pending'"))


def downgrade() -> None:
    op.drop_index("ix_jobs_pending", table_name="jobs")
