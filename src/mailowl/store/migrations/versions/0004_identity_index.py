"""jobs are found by identity alone: finishing a job no longer moves its index entry

Revision ID: 0004
Revises: 0003
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # (identity, finished_at) made every finished job rewrite a randomly placed index page; one identity has
    # few rows, so sorting them by finished_at after the lookup costs nothing
    op.create_index("ix_jobs_identity", "jobs", ["identity"])
    op.drop_index("ix_jobs_identity_finished", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_identity_finished", "jobs", ["identity", "finished_at"])
    op.drop_index("ix_jobs_identity", table_name="jobs")
