"""A thin, line-aware view of HCL files on top of python-hcl2.

python-hcl2's `loads()` returns a dict without source positions (its
`with_meta` option is declared but not implemented in 8.x), keeps string
quotes and escapes as source text, and silently keeps the last of two
duplicate arguments. Runbot needs `file:line` in every message and real
values for defaults, so this module walks hcl2's rule tree instead, whose
nodes carry Lark positions, and evaluates only constant expressions itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import hcl2
from hcl2.rules.abstract import LarkRule, LarkToken
from hcl2.rules.base import AttributeRule, BlockRule, BodyRule
from hcl2.rules.containers import (
    ObjectElemKeyExpressionRule,
    ObjectElemKeyRule,
    ObjectRule,
    TupleRule,
)
from hcl2.rules.expressions import ExprTermRule, UnaryOpRule
from hcl2.rules.literal_rules import FloatLitRule, IdentifierRule, IntLitRule, LiteralValueRule
from hcl2.rules.strings import HeredocTemplateRule, StringRule
from hcl2.utils import SerializationOptions, process_escape_sequences, unwrap_dollar_string
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from app.stacks.model import StackError

__all__ = ["Attribute", "Block", "NotConstant", "constant_value", "expression_text", "parse"]

_TEXT_OPTIONS = SerializationOptions(
    with_comments=False, wrap_objects=True, wrap_tuples=True, explicit_blocks=False
)
_HEREDOC_VALUE_OPTIONS = SerializationOptions(
    with_comments=False, preserve_heredocs=False, strip_string_quotes=True
)
_LITERALS = {"true": True, "false": False, "null": None}
# In a template, `$${` and `%%{` are escapes for a literal `${` / `%{`; the
# unescaped forms start an interpolation or directive, which is not constant.
_TEMPLATE_MARKER = re.compile(r"\$\$\{|%%\{|\$\{|%\{")


class NotConstant(Exception):
    """The expression needs evaluation (references, functions, operators, templates)."""


@dataclass(frozen=True)
class Attribute:
    """`name = expression` inside a body; `expression` is an hcl2 rule node."""

    name: str
    expression: Any
    file: str
    line: int


@dataclass(frozen=True)
class Block:
    """`type "label" ... { body }` with its arguments and nested blocks in source order."""

    type: str
    labels: tuple[str, ...]
    attributes: dict[str, Attribute]
    blocks: tuple[Block, ...]
    file: str
    line: int


def parse(text: str, file: str) -> list[Block]:
    """Parse HCL text into top-level blocks; `file` is only used in messages.

    Syntax errors become a StackError naming `file:line` (Lark reports 1-based
    lines) and the offending token, so the author can jump straight to it.
    """
    try:
        tree = hcl2.parses(text)
    except UnexpectedInput as exc:
        # hcl2 appends a newline before parsing, so an error at end of input can
        # point one line past the file; clamp it to the file's last line.
        last_line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
        line = min(exc.line, last_line) if exc.line > 0 else last_line
        raise StackError(f"{file}:{line}: syntax error, {_describe(exc)}") from exc
    except Exception as exc:  # hcl2 also raises plain RuntimeErrors for malformed input
        raise StackError(f"{file}: cannot parse this file as HCL ({exc})") from exc
    top = [child for child in tree.body.children if isinstance(child, AttributeRule)]
    if top:
        name = top[0].identifier.serialize()
        raise StackError(
            f"{file}:{_line(top[0])}: argument {name!r} is not allowed at the top level "
            "of a Terraform file: move it into a block"
        )
    return _blocks(tree.body, file)


def constant_value(expression: Any) -> Any:
    """The Python value of a literal HCL expression, or NotConstant.

    Covers what Terraform accepts as a variable default: numbers, strings without
    interpolation, heredocs, true/false/null, lists, objects, unary minus/not.
    """
    node = expression
    while isinstance(node, ExprTermRule):
        node = node.expression
    if isinstance(node, IntLitRule):
        return int(str(node.token.value))
    if isinstance(node, FloatLitRule):
        return float(str(node.token.value))
    if isinstance(node, LiteralValueRule):
        keyword = str(node.token.value)
        if keyword in _LITERALS:
            return _LITERALS[keyword]
        raise NotConstant(keyword)
    if isinstance(node, StringRule):
        return _string_value(node)
    if isinstance(node, HeredocTemplateRule):
        return _unescape_template(node.serialize(_HEREDOC_VALUE_OPTIONS))
    if isinstance(node, TupleRule):
        return [constant_value(element) for element in node.elements]
    if isinstance(node, ObjectRule):
        result: dict[str, Any] = {}
        for element in node.elements:
            result[_object_key(element.key)] = constant_value(element.expression)
        return result
    if isinstance(node, UnaryOpRule):
        operator = node.operator.strip()
        operand = constant_value(node.expr_term)
        is_number = isinstance(operand, int | float) and not isinstance(operand, bool)
        if operator == "-" and is_number:
            return -operand
        if operator == "!" and isinstance(operand, bool):
            return not operand
    raise NotConstant(expression_text(expression))


def expression_text(expression: Any) -> str:
    """An expression as normalised HCL source (comments and `${}` wrappers removed)."""
    value = expression.serialize(_TEXT_OPTIONS)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return unwrap_dollar_string(str(value))


def _blocks(body: BodyRule, file: str) -> list[Block]:
    return [_block(child, file) for child in body.children if isinstance(child, BlockRule)]


def _block(rule: BlockRule, file: str) -> Block:
    line = _line(rule)
    labels = [_label(label, file, line) for label in rule.labels]
    attributes: dict[str, Attribute] = {}
    nested: list[Block] = []
    for child in rule.body.children:
        if isinstance(child, AttributeRule):
            name = str(child.identifier.serialize())
            attribute = Attribute(name, child.expression, file, _line(child))
            if name in attributes:
                raise StackError(
                    f"{file}:{attribute.line}: argument {name!r} is set twice in this "
                    f"{labels[0]} block (first at line {attributes[name].line}): remove one"
                )
            attributes[name] = attribute
        elif isinstance(child, BlockRule):
            nested.append(_block(child, file))
    return Block(labels[0], tuple(labels[1:]), attributes, tuple(nested), file, line)


def _label(label: Any, file: str, line: int) -> str:
    if isinstance(label, IdentifierRule):
        return str(label.token.value)
    try:
        value = constant_value(label)
    except NotConstant:
        value = None
    if not isinstance(value, str):
        raise StackError(f"{file}:{line}: block labels must be plain quoted strings")
    return value


def _string_value(node: StringRule) -> str:
    parts: list[str] = []
    for part in node.string_parts:
        content = part.content
        kind = content.lark_name() if isinstance(content, LarkToken) else ""
        if kind == "STRING_CHARS":
            parts.append(process_escape_sequences(str(content.value)))
        elif kind in ("ESCAPED_INTERPOLATION", "ESCAPED_DIRECTIVE"):
            parts.append(str(content.value)[1:])  # `$${x}` is the literal `${x}`
        else:
            raise NotConstant(expression_text(node))
    return "".join(parts)


def _unescape_template(text: str) -> str:
    """Resolve `$${`/`%%{` in heredoc text; an unescaped `${`/`%{` is not constant."""

    def replace(match: re.Match[str]) -> str:
        marker = match.group(0)
        if len(marker) == 3:
            return marker[1:]
        raise NotConstant(text)

    return _TEMPLATE_MARKER.sub(replace, text)


def _object_key(key: Any) -> str:
    if isinstance(key, ObjectElemKeyRule):
        inner = key.value
        if isinstance(inner, IdentifierRule):
            return str(inner.token.value)
        value = constant_value(inner)
    elif isinstance(key, ObjectElemKeyExpressionRule):
        value = constant_value(key.expression)
    else:
        raise NotConstant(expression_text(key))
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        raise NotConstant(expression_text(key))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _line(rule: LarkRule) -> int:
    """1-based source line of a rule; 0 if hcl2 did not record one."""
    meta = getattr(rule, "_meta", None)  # hcl2 keeps Lark's Meta privately
    return int(getattr(meta, "line", 0) or 0)


def _describe(exc: UnexpectedInput) -> str:
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            return "the file ends early (an unclosed block, bracket or string?)"
        text = str(token.value).splitlines()[0] if str(token.value).strip() else repr(token.value)
        return f"unexpected {text[:40]!r} at column {exc.column}"
    if isinstance(exc, UnexpectedCharacters):
        return f"unexpected character {exc.char!r} at column {exc.column}"
    return f"unexpected input at column {exc.column}"
