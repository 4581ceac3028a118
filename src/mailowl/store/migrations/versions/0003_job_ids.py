"""job ids from the database (autoincrement / sequence), never reused; the run that created a job

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    if dialect == "sqlite":
        # recreated as INTEGER PRIMARY KEY AUTOINCREMENT: sqlite_sequence then remembers the highest id ever
        # used, so deleting the newest rows never makes their ids available again
        with op.batch_alter_table("jobs", recreate="always", table_kwargs={"sqlite_autoincrement": True}) as batch:
            batch.alter_column("id", existing_type=sa.BigInteger, type_=sa.Integer, autoincrement=True,
                               existing_nullable=False)
            batch.add_column(sa.Column("run", sa.String(128)))
    elif dialect == "postgresql":
        op.execute("CREATE SEQUENCE jobs_id_seq OWNED BY jobs.id")
        op.execute("SELECT setval('jobs_id_seq', COALESCE((SELECT max(id) FROM jobs), 0) + 1, false)")
        op.execute("ALTER TABLE jobs ALTER COLUMN id SET DEFAULT nextval('jobs_id_seq')")
        op.add_column("jobs", sa.Column("run", sa.String(128)))
    else:
        # InnoDB keeps the counter above every id handed out, across deletes and restarts (MariaDB >= 10.2.4)
        op.execute("ALTER TABLE jobs MODIFY id BIGINT NOT NULL AUTO_INCREMENT")
        op.add_column("jobs", sa.Column("run", sa.String(128)))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("run")
