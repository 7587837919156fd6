"""Strict YAML reading: ``yaml.safe_load`` that refuses a key given twice in one mapping.

PyYAML keeps the last of two equal keys without a word, so a config that sets ``lr`` twice
trains with whichever comes last. Every YAML terrasynth reads (configs, schemes, remaps)
goes through :func:`load_yaml`.
"""

from __future__ import annotations

from typing import Any

import yaml

from terrasynth.errors import UserError


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping holds the same key twice; ``problem_mark`` points at the second one."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges are not duplicates
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not None:
                raise DuplicateKeyError(f"first on line {first.start_mark.line + 1}", node.start_mark,
                                        f"key {key!r} appears twice in one mapping", key_node.start_mark)  # fmt: skip
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML ``text``; a duplicated key is a one-line :class:`UserError` naming key and lines.

    Other syntax errors raise ``yaml.YAMLError`` as ``yaml.safe_load`` would (callers word them).
    """
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except DuplicateKeyError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise UserError(f"{where}: line {line}: {exc.problem} ({exc.context}); keep only one of them") from exc
