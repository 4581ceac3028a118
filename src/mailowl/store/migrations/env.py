from alembic import context

from mailowl.store.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("mailowl runs its migrations itself (mailowl serve / mailowl db upgrade)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
