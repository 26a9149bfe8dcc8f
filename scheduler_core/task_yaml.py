"""The YAML loader of task files: ``yaml.safe_load``'s results and errors, built faster.

libyaml parses and composes the nodes, as ``CSafeLoader`` does (the pure-Python
``SafeLoader`` where PyYAML was built without it). What a task file is made of (mappings,
sequences, and plain scalars: strings, numbers, booleans, nulls, timestamps) is then built
by one small recursive function instead of PyYAML's generic constructor, which costs a few
Python calls a node (~0.3 s of a 10,000-task file's ~0.6 s). Anything else (an explicit
tag such as ``!!set``, a merge key ``<<``, an alias of a mapping or sequence, a key that is
not a scalar), and any error, is built again from the same nodes by PyYAML's own
``SafeConstructor``: same objects, same errors with the same line numbers.

Scalars keep ``SafeConstructor``'s own functions (``construct_yaml_int`` and the rest), and
the tag of a plain scalar comes from the same implicit resolvers, looked up without the
general path (``resolve``), while no path resolver is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["TaskFileLoader"]

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # PyYAML built without libyaml: the pure-Python parser, same results
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
#: The scalar tags built by ``SafeConstructor``'s functions (pure functions of their node),
#: each with the function that must be registered for it (else PyYAML's path builds all).
_STOCK: dict[str, Callable[[SafeConstructor, ScalarNode], Any]] = {
    "tag:yaml.org,2002:null": SafeConstructor.construct_yaml_null,
    "tag:yaml.org,2002:bool": SafeConstructor.construct_yaml_bool,
    "tag:yaml.org,2002:int": SafeConstructor.construct_yaml_int,
    "tag:yaml.org,2002:float": SafeConstructor.construct_yaml_float,
    "tag:yaml.org,2002:timestamp": SafeConstructor.construct_yaml_timestamp,
    _STR: SafeConstructor.construct_yaml_str,
    _MAP: SafeConstructor.construct_yaml_map,
    _SEQ: SafeConstructor.construct_yaml_seq,
}


class _NotPlain(Exception):
    """Something the plain builder leaves to PyYAML's constructor."""


class TaskFileLoader(_BaseLoader):
    """``CSafeLoader`` (else ``SafeLoader``) with the plain-document fast path above."""

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> Any:
        """The tag of a node without one: ``Resolver.resolve``, whose only rules with no path
        resolvers (and no wildcard implicit resolver) are these: a plain scalar takes the
        tag of the first implicit resolver for its first character that matches it, any
        other scalar is a string."""
        resolvers = self.yaml_implicit_resolvers
        if kind is not ScalarNode or self.yaml_path_resolvers or None in resolvers:
            return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
        if implicit[0]:
            for tag, regexp in resolvers.get(value[:1], ()):
                if regexp.match(value):
                    return tag
        return self.DEFAULT_SCALAR_TAG

    def construct_document(self, node: Node) -> Any:
        """The document ``node`` as plain Python objects; PyYAML's constructor for anything
        the plain builder does not take (it then says what is wrong, where)."""
        registered = self.yaml_constructors
        if all(registered.get(tag) is function for tag, function in _STOCK.items()):
            try:
                return _build(self, node)
            except Exception:  # not plain, or an error: built (or raised) PyYAML's way
                pass
        return super().construct_document(node)


def _build(loader: SafeConstructor, root: Node) -> Any:
    """``root`` built as ``SafeConstructor`` builds it; _NotPlain for what it leaves."""
    seen: set[int] = set()

    def build(node: Node) -> Any:
        kind, tag = node.__class__, node.tag
        if kind is ScalarNode:
            if tag == _STR:
                return node.value
            function = _STOCK.get(tag)
            if function is None or tag in (_MAP, _SEQ):
                raise _NotPlain(tag)
            return function(loader, node)  # type: ignore[arg-type]
        if id(node) in seen:  # an alias: PyYAML shares one object (or finds a recursion)
            raise _NotPlain("alias")
        seen.add(id(node))
        if kind is MappingNode and tag == _MAP:
            mapping: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.__class__ is not ScalarNode or key_node.tag in (_MAP, _SEQ):
                    raise _NotPlain("key")
                mapping[build(key_node)] = build(value_node)
            return mapping
        if kind is SequenceNode and tag == _SEQ:
            return [build(child) for child in node.value]
        raise _NotPlain(tag)

    return build(root)
