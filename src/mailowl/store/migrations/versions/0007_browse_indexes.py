"""indexes for the web interface's searches: jobs by sha256, messages by sender

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # identity hashes the sha256 together with the declared name, type and disposition, so ix_jobs_identity
    # cannot find a sha256; one more index entry per new job is what a search by hash costs
    op.create_index("ix_jobs_sha256", "jobs", ["sha256"])
    # a sender's messages, newest first, without sorting them
    op.create_index("ix_messages_from", "messages", ["mail_from", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_from", table_name="messages")
    op.drop_index("ix_jobs_sha256", table_name="jobs")
