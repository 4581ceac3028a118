"""jobs.facts: the reports the rules read during a job's analysis, for ``mailowl expr facts JOB_ID``

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: jobs from before this revision, and failed ones, have none. MariaDB's TEXT ends at 64 KiB,
    # which a Cortex report's `full` can pass: MEDIUMTEXT there
    op.add_column("jobs", sa.Column("facts", sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"),
                                    nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "facts")
