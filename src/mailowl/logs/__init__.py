"""Verdict logs: KLMS-format lines (or ECS JSON) for every decision, and a parser and shipper for them."""
