"""PeekabooAV's rule expression language: parsed with a grammar, evaluated by walking the tree."""

from mailowl.expr.evaluate import Expression, ExpressionError, compile_expression

__all__ = ["Expression", "ExpressionError", "compile_expression"]
