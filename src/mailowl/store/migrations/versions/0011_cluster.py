"""work and instances: several mailowl instances on one MariaDB or PostgreSQL share their work

Revision ID: 0011
Revises: 0010

Only adds (two tables, one nullable column): an instance of the previous version keeps running while
this is applied, and never reads what it adds.
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "work",
        sa.Column("key", sa.String(80), primary_key=True),
        sa.Column("identity", sa.String(64), nullable=False),
        sa.Column("job_id", sa.BigInteger),
        sa.Column("owner", sa.String(128)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("filename", sa.String(512)),
        sa.Column("type_declared", sa.String(255)),
        sa.Column("content_disposition", sa.String(255)),
        sa.Column("content", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"), nullable=False),
        sa.Index("ix_work_identity", "identity"),
    )
    op.create_table(
        "instances",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("parked", sa.Column("owner", sa.String(128), nullable=True))


def downgrade() -> None:
    op.drop_column("parked", "owner")
    op.drop_table("instances")
    op.drop_table("work")
