"""Mail ingress: messages -> parts -> samples, and the per-message decision."""
