"""PeekabooAV's rule expression language: parsed by a parser of its own, evaluated by walking the tree."""

from mailowl.expr.evaluate import DIALECTS, Expression, ExpressionError, compile_expression, load

__all__ = ["DIALECTS", "Expression", "ExpressionError", "compile_expression", "load"]
