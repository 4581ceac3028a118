"""REST API: PeekabooAV's v1, mailowl's v2, health, metrics and OpenAPI."""
