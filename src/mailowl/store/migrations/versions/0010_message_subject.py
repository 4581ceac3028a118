"""messages.subject: the mail's Subject, decoded, for the web interface

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: records from before this revision have none, and so do mails without a Subject
    op.add_column("messages", sa.Column("subject", sa.String(512), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "subject")
