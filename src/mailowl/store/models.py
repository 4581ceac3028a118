"""Tables. Changes go through an Alembic migration in store/migrations/versions/."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects import mysql

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    # ids come from the database and are never reused: SQLite needs INTEGER (a rowid alias) and AUTOINCREMENT,
    # else it hands out a deleted maximum again
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("identity", String(64), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("sha1", String(40)),
    Column("md5", String(32)),
    Column("size", BigInteger, nullable=False),
    Column("filename", String(512)),
    Column("type_declared", String(255)),
    Column("content_disposition", String(255)),
    Column("file_extension", String(255)),
    Column("type_by_content", String(255)),
    Column("type_by_name", String(255)),
    Column("state", String(16), nullable=False),
    Column("result", String(16)),
    Column("reason", Text),
    Column("rule_results", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    #: the process that created the job ("host pid start-ticks"): only a dead run's pending jobs are abandoned
    Column("run", String(128)),
    #: JSON: the reports the rules read during the analysis, as far as they computed them (expr/facts.py)
    Column("facts", Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")),
    Index("ix_jobs_identity", "identity"),
    Index("ix_jobs_created", "created_at"),
    # start-up's search for pending jobs of dead runs (0009); MariaDB has no partial index: (state, run) there
    Index("ix_jobs_pending", "run", sqlite_where=text("state = 'pending'"), postgresql_where=text("state = 'pending'")),
    sqlite_autoincrement=True,
)

#: which identities a sha256 was analysed under, for the search by hash (store/browse.py): a row per analysed
#: identity, none for the repeats the verdict cache answers, so a cached job costs no index entry here
samples = Table(
    "samples",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("identity", String(64), primary_key=True),
    sqlite_with_rowid=False,
)

messages = Table(
    "messages",
    metadata,
    Column("support_id", String(32), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("ingress", String(16), nullable=False),
    Column("message_id", String(255)),
    #: the Subject header, RFC 2047 words decoded (migration 0010)
    Column("subject", String(512)),
    Column("mail_from", String(512)),
    Column("rcpt_to", Text),
    Column("client_ip", String(64)),
    Column("size", BigInteger),
    Column("action", String(16), nullable=False),
    Column("reply", Text),
    Column("parts", Text),
    Column("findings", Text),
    Index("ix_messages_created", "created_at"),
    Index("ix_messages_from", "mail_from", "created_at"),  # the web interface's search by sender (0007)
)

#: samples waiting for a remote analysis (Cortex): the sample itself, the jobs waiting for its verdict,
#: and the remote job being tracked; a restart resumes tracking them (store/parked.py)
parked = Table(
    "parked",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("identity", String(64), nullable=False),
    Column("job_ids", Text, nullable=False),
    Column("analyzer", String(255), nullable=False),
    Column("data_type", String(16), nullable=False),
    Column("remote_job", String(255)),
    Column("submitted_at", DateTime(timezone=True), nullable=False),
    Column("deadline", DateTime(timezone=True), nullable=False),
    Column("filename", String(512)),
    Column("type_declared", String(255)),
    Column("content_disposition", String(255)),
    Column("reports", Text, nullable=False),
    Column("content", LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"), nullable=False),
    #: the instance tracking it (cluster mode, 0011); another takes it over once that one stops heartbeating
    Column("owner", String(128)),
    sqlite_autoincrement=True,
)

#: cluster mode (MariaDB, PostgreSQL): a sample being analysed, by key (its identity, or ``force:`` and a
#: token for a forced analysis), with its bytes, so another instance can take it over (store/work.py, 0011)
work = Table(
    "work",
    metadata,
    Column("key", String(80), primary_key=True),
    Column("identity", String(64), nullable=False),
    #: a forced analysis' own job (its verdict is not the identity's other jobs' verdict)
    Column("job_id", BigInteger),
    Column("owner", String(128)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("filename", String(512)),
    Column("type_declared", String(255)),
    Column("content_disposition", String(255)),
    Column("content", LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"), nullable=False),
    Index("ix_work_identity", "identity"),
)

#: cluster mode: the instances on this database and their last heartbeat (the database's clock)
instances = Table(
    "instances",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
)
