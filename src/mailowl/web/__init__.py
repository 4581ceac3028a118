"""The read-only web interface at /ui: what mailowl decided about each message and job, and why.

It only reads what the store holds (store/browse.py); it never changes a verdict or a setting."""
