"""parked: samples waiting for a remote analysis (Cortex), so a restart resumes tracking them

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "parked",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("identity", sa.String(64), nullable=False),
        sa.Column("job_ids", sa.Text, nullable=False),
        sa.Column("analyzer", sa.String(255), nullable=False),
        sa.Column("data_type", sa.String(16), nullable=False),
        sa.Column("remote_job", sa.String(255)),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("filename", sa.String(512)),
        sa.Column("type_declared", sa.String(255)),
        sa.Column("content_disposition", sa.String(255)),
        sa.Column("reports", sa.Text, nullable=False),
        sa.Column("content", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"), nullable=False),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("parked")
