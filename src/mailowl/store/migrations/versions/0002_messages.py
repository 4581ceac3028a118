"""messages: one row per decided mail, its parts and their jobs, found by support id

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("support_id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ingress", sa.String(16), nullable=False),
        sa.Column("message_id", sa.String(255)),
        sa.Column("mail_from", sa.String(512)),
        sa.Column("rcpt_to", sa.Text),
        sa.Column("client_ip", sa.String(64)),
        sa.Column("size", sa.BigInteger),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reply", sa.Text),
        sa.Column("parts", sa.Text),
        sa.Column("findings", sa.Text),
    )
    op.create_index("ix_messages_created", "messages", ["created_at"])


def downgrade() -> None:
    op.drop_table("messages")
