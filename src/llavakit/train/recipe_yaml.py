"""Reading a recipe: a YAML file (broken YAML and keys given twice named), dotted ``key=value`` overrides, and the
typed dataclasses built from the result with every key and value type checked (``build``). Used by the training
recipe (llavakit.train.recipe) and the stage-0 recipe (llavakit.train.stage0.run).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

from .ranges import RecipeError


def read_recipe_file(path: str | Path, what: str, sections: str) -> dict[str, Any]:
    """The mapping of a recipe YAML file; a missing file, broken YAML, a key given twice or a document that is not
    a mapping of ``sections`` is one clear error naming the file (``what``: "recipe", "stage 0 recipe")."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {p} does not exist")
    try:
        raw, twice = parse_yaml(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{what} {p} is not valid YAML: {e}") from e
    if twice:  # YAML keeps the last silently: a second `train:` section would drop every key of the first
        raise ValueError(f"{what} {p}: {twice[0]} is given twice (lines {twice[1]} and {twice[2]}); keep one of them")
    if not isinstance(raw or {}, dict):
        raise ValueError(f"{what} {p} must be a mapping of {sections}")
    return raw or {}


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None, form: str) -> None:
    """Set each ``key=value`` of ``overrides`` in ``raw``, the value read as YAML (empty: null). A malformed item
    or a value that is not YAML is one clear error naming it (``form``: what an item must look like)."""
    import yaml

    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like {form}")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:  # not a ValueError: the CLI would print PyYAML's traceback
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(
                f"override {item!r}: the value is not valid YAML ({problem}); close what is left open, or quote a "
                f"text value whole, e.g. {key.strip()}='\"...\"' in the shell"
            ) from None
        _set_dotted(raw, key.strip(), parsed)


def parse_yaml(text: str) -> tuple[Any, tuple[str, int, int] | None]:
    """The YAML document of ``text`` (as ``yaml.safe_load`` reads it, parsed once) and the first mapping key written
    twice in it, (dotted key, first line, second line), or None: YAML itself keeps the last silently. Raises
    ``yaml.YAMLError``."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:  # an empty document
            return None, None
        return loader.construct_document(node), _key_given_twice(node, "")
    finally:
        loader.dispose()


def _key_given_twice(node: Any, where: str, visited: set[int] | None = None) -> tuple[str, int, int] | None:
    """The first mapping key written twice in a composed YAML document: (dotted key, first line, second line)."""
    import yaml

    visited = set() if visited is None else visited
    if id(node) in visited:  # an alias of a node already walked (or a recursive anchor)
        return None
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = f"{where}.{key.value}" if where else str(key.value)
            if name in seen:
                return name, seen[name], key.start_mark.line + 1
            seen[name] = key.start_mark.line + 1
            found = _key_given_twice(value, name, visited)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _key_given_twice(item, f"{where}[{i}]", visited)
            if found:
                return found
    return None


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        d = d.setdefault(part, {})
        if not isinstance(d, dict):
            raise ValueError(f"override {key}: {part} is not a section")
    d[parts[-1]] = value


def build(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a dict, checking every key and value type."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where or 'recipe'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]}?" if close else ""
            raise ValueError(f"unknown recipe key {full!r}{hint} (known: {', '.join(names)})")
        tp = hints[key]
        kwargs[key] = build(tp, value, full) if dataclasses.is_dataclass(tp) else _check(value, tp, full)
    try:
        return cls(**kwargs)
    except RecipeError:  # already names the full key (train.micro_batch_size ...)
        raise
    except ValueError as e:
        raise ValueError(f"{where or 'recipe'}: {e}") from e


def _check(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (ints accepted for floats) or ValueError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{key} must be a list ({_name(tp)}), got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_check(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ValueError(f"{key} must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
