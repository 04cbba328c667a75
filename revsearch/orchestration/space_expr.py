"""Arithmetic expressions of ``derived`` space parameters: parsed from the AST, never ``eval``-ed.

Allowed: numbers, names, ``+ - * / // %``, unary minus/plus, parentheses. ``expr_names`` lists the
names an expression reads (checking its syntax); ``safe_eval`` evaluates it over a mapping of numbers.
Every problem is a one-line ``ConfigError`` (the caller prefixes the file and key).
"""
from __future__ import annotations

import ast
import math
import operator
from typing import Any, List, Mapping

from ..errors import ConfigError
from .sweep_errors import is_number, quoted_value

MAX_EXPR_CHARS = 500
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%"}


def _parse(expr: str) -> ast.AST:
    if not isinstance(expr, str):
        raise ConfigError(f"expression must be a string, got {quoted_value(expr)}")
    if len(expr) > MAX_EXPR_CHARS:
        raise ConfigError(f"expression longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise ConfigError(f"invalid expression {quoted_value(expr)}: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError):
        raise ConfigError(f"invalid expression {quoted_value(expr)}") from None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.Name, ast.Load)) or type(node) in _BINOPS or type(node) in _UNARY:
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            continue
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            continue
        if isinstance(node, ast.Constant) and is_number(node.value):
            continue
        what = (f"constant {quoted_value(node.value)}" if isinstance(node, ast.Constant)
                else f"'{type(node.op).__name__}' operator" if isinstance(node, (ast.BinOp, ast.UnaryOp))
                else type(node).__name__)
        raise ConfigError(f"{what} not allowed in {quoted_value(expr)}; only numbers, parameter names, "
                          f"+ - * / // % and parentheses")
    return tree


def expr_names(expr: str) -> List[str]:
    """The parameter names an expression reads, in order of first use (validates the syntax)."""
    names: List[str] = []
    for node in ast.walk(_parse(expr)):
        if isinstance(node, ast.Name) and node.id not in names:
            names.append(node.id)
    return names


def safe_eval(expr: str, names: Mapping[str, Any]) -> float:
    """Evaluate arithmetic over ``names`` (numbers only); raises ``ConfigError`` on anything else."""
    tree = _parse(expr)

    def ev(node: ast.AST):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ConfigError(f"unknown name {node.id!r}; known: {', '.join(names) or '(none)'}")
            value = names[node.id]
            if not is_number(value):
                raise ConfigError(f"{node.id!r} is {quoted_value(value)}, not a number")
            return value
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](ev(node.operand))
        left, right = ev(node.left), ev(node.right)
        try:
            return _BINOPS[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ConfigError(f"division by zero in {quoted_value(expr)} ({quoted_value(left)} "
                              f"{_SYMBOLS[type(node.op)]} {quoted_value(right)})") from None
        except OverflowError:
            raise ConfigError(f"overflow in {quoted_value(expr)}") from None

    try:
        result = ev(tree)
    except RecursionError:
        raise ConfigError(f"expression nested too deeply: {quoted_value(expr)}") from None
    if isinstance(result, float) and not math.isfinite(result):
        raise ConfigError(f"{quoted_value(expr)} is not finite ({result})")
    return result
