"""The coordinator between ingress and analysis: the queue, worker threads and processes, deadlines,
de-duplication of identities in flight, and completion into the store, the verdict log and the metrics."""
