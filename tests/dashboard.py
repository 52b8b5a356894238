"""The Grafana dashboard's queries, read strictly: each one parsed as the part of PromQL the
dashboard uses (anything else is an error that says where), and the metrics it selects."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).parents[1] / "deploy" / "grafana" / "dashboards" / "voxgate.json"

AGGREGATIONS = {"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk"}
FUNCTIONS = {
    "rate",
    "irate",
    "increase",
    "delta",
    "deriv",
    "histogram_quantile",
    "abs",
    "clamp_min",
    "clamp_max",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
}
BINARY_OPERATORS = {"+", "-", "*", "/", "%", "^", "==", "!=", ">", "<", ">=", "<=", "and", "or"}
LABEL_MATCHERS = {"=", "!=", "=~", "!~"}
TOKEN = re.compile(
    r"""\s*(
        \$__\w+                       # a Grafana interval variable ($__rate_interval, $__range)
      | \d+(?:\.\d+)?[smhdwy]?        # a number, or a duration
      | [A-Za-z_:][\w:]*              # a metric, label, function or keyword
      | "(?:[^"\\]|\\.)*"             # a string
      | =~ | !~ | != | == | >= | <=
      | [-+*/%^(){}\[\],=<>]
    )""",
    re.VERBOSE,
)
METRIC = re.compile(r"[A-Za-z_:][\w:]*")
LABEL = re.compile(r"[A-Za-z_]\w*")
NUMBER = re.compile(r"\d+(?:\.\d+)?")
RANGE = re.compile(r"\d+[smhdwy]|\$__\w+")


class PromQLError(ValueError):
    """A query that is not the PromQL this dashboard is written in."""


def panels() -> list[dict[str, Any]]:
    """The dashboard's graphs (its rows left out)."""
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def queries() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metrics `expr` selects; PromQLError where it does not parse."""
    reader = _Reader(expr)
    reader.expression()
    if reader.peek() is not None:
        raise reader.error("unexpected")
    return reader.metrics


def _tokens(expr: str) -> list[str]:
    tokens, position = [], 0
    while expr[position:].strip():
        match = TOKEN.match(expr, position)
        if match is None:
            raise PromQLError(f"cannot read {expr[position:]!r} in {expr!r}")
        tokens.append(match.group(1))
        position = match.end()
    return tokens


class _Reader:
    """A recursive-descent reader over the tokens of one query."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = _tokens(expr)
        self.position = 0
        self.metrics: set[str] = set()

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, *expected: str) -> str:
        token = self.peek()
        if token is None or (expected and token not in expected):
            raise self.error(f"expected {' or '.join(expected) or 'more'}")
        self.position += 1
        return token

    def error(self, what: str) -> PromQLError:
        return PromQLError(f"{what} at token {self.position} ({self.peek()!r}) of {self.expr!r}")

    def expression(self) -> None:
        self.operand()
        while self.peek() in BINARY_OPERATORS:
            self.take()
            self.operand()

    def operand(self) -> None:
        if self.peek() in ("-", "+"):
            self.take()
        token = self.take()
        if token == "(":
            self.expression()
            self.take(")")
        elif NUMBER.fullmatch(token) or token.startswith('"'):
            pass
        elif token in AGGREGATIONS:
            grouped = self.grouping()
            self.arguments()
            if not grouped:
                self.grouping()
        elif token in FUNCTIONS:
            self.arguments()
        elif METRIC.fullmatch(token) and self.peek() != "(":
            self.selector(token)
        else:
            raise self.error(f"{token!r} is not a number, string, function or metric")

    def grouping(self) -> bool:
        """An optional `by (label, ...)` or `without (...)`; whether there was one."""
        if self.peek() not in ("by", "without"):
            return False
        self.take()
        self.take("(")
        while self.peek() != ")":
            if not LABEL.fullmatch(self.take()):
                raise self.error("a label name expected")
            if self.peek() != ")":
                self.take(",")
        self.take(")")
        return True

    def arguments(self) -> None:
        self.take("(")
        self.expression()
        while self.peek() == ",":
            self.take()
            self.expression()
        self.take(")")

    def selector(self, metric: str) -> None:
        self.metrics.add(metric)
        if self.peek() == "{":
            self.take()
            while self.peek() != "}":
                if not LABEL.fullmatch(self.take()):
                    raise self.error("a label name expected")
                self.take(*LABEL_MATCHERS)
                if not self.take().startswith('"'):
                    raise self.error("a quoted label value expected")
                if self.peek() != "}":
                    self.take(",")
            self.take("}")
        if self.peek() == "[":
            self.take()
            if not RANGE.fullmatch(self.take()):
                raise self.error("a duration expected")
            self.take("]")
