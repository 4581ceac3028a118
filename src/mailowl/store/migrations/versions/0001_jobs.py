"""jobs table with per-rule results; verdict cache index on identity

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("identity", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("sha1", sa.String(40)),
        sa.Column("md5", sa.String(32)),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("filename", sa.String(512)),
        sa.Column("type_declared", sa.String(255)),
        sa.Column("content_disposition", sa.String(255)),
        sa.Column("file_extension", sa.String(255)),
        sa.Column("type_by_content", sa.String(255)),
        sa.Column("type_by_name", sa.String(255)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("result", sa.String(16)),
        sa.Column("reason", sa.Text),
        sa.Column("rule_results", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_jobs_identity_finished", "jobs", ["identity", "finished_at"])
    op.create_index("ix_jobs_created", "jobs", ["created_at"])


def downgrade() -> None:
    op.drop_table("jobs")
