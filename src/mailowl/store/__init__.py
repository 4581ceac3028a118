"""Persistence: jobs with their per-rule results; the verdict cache is the finished jobs by identity."""

from mailowl.store.jobs import Job
from mailowl.store.messages import MessageRecord
from mailowl.store.store import Store, StoreError

__all__ = ["Job", "MessageRecord", "Store", "StoreError"]
