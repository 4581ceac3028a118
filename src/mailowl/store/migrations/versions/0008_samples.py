"""samples (sha256 → identity) replaces ix_jobs_sha256 for the search by hash

Revision ID: 0008
Revises: 0007

An index on jobs.sha256 took one more random index page per stored job, cached repeats included; the
samples table takes a row only when an identity is analysed, and the search reaches the jobs through
ix_jobs_identity.
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "samples",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("identity", sa.String(64), primary_key=True),
        sqlite_with_rowid=False,
    )
    op.execute("INSERT INTO samples (sha256, identity) SELECT DISTINCT sha256, identity FROM jobs")
    op.drop_index("ix_jobs_sha256", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_sha256", "jobs", ["sha256"])
    op.drop_table("samples")
