"""The normal form in which every resource's inputs are checked and compared.

Facts about the engine that make one necessary (see docs/architecture.md):

* During preview a value may be unknown, anywhere inside an input. Check and diff see an
  ``Unknown`` object, or the sentinel string before deserialization.
* Numbers cross the engine as protobuf floats (``vcpu`` 2 arrives as 2.0). ``spec``'s models
  turn them back into the API's types; :func:`seconds` does it for inputs of our own.
* Diff, update, read and delete receive the old *outputs*, so outputs carry every compared
  input in the same normal form as check's answer, and diff compares normal forms only.
* The dynamic provider gets no secrets (the engine strips them), so a credential is kept in
  outputs at most as a :func:`fingerprint` that still shows when it changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from pulumi.dynamic import CheckFailure
from pulumi.output import Unknown
from pulumi.runtime import rpc

from pulumi_leap0 import spec

ModelT = TypeVar("ModelT")


# --- Unknowns --------------------------------------------------------------------------------


def is_unknown_leaf(value: Any) -> bool:
    return isinstance(value, Unknown) or (isinstance(value, str) and value == rpc.UNKNOWN)


def is_unknown(value: Any) -> bool:
    """Whether ``value`` is unknown or holds an unknown anywhere inside."""
    return bool(unknown_paths(value, "-"))


def unknown_paths(value: Any, path: str) -> list[str]:
    """API field paths (``mounts[0].bucket``) of every unknown inside ``value``."""
    if is_unknown_leaf(value):
        return [path]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in unknown_paths(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in unknown_paths(v, f"{path}[{i}]")]
    return []


class _StandIn:
    """An unknown during validation: no type accepts it."""


_STAND_IN = _StandIn()


def _unknowns_as_objects(value: Any) -> Any:
    # The sentinel is a string and would pass as one; an object fails every type, so its
    # error lands exactly on its own path, where normalize drops it.
    if is_unknown_leaf(value):
        return _STAND_IN
    if isinstance(value, Mapping):
        return {k: _unknowns_as_objects(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_unknowns_as_objects(v) for v in value]
    return value


def _under(field: str, path: str) -> bool:
    return field == path or field.startswith((f"{path}.", f"{path}["))


# --- API inputs ------------------------------------------------------------------------------


def normalize(
    given: dict[str, Any],
    validate: Callable[[dict[str, Any]], ModelT],
    inputs_of: Callable[[ModelT], dict[str, Any]],
    stand_ins: Mapping[str, Any],
) -> tuple[dict[str, Any], list[CheckFailure]]:
    """Every known input normalized, unknown ones kept as they are, and what broke a rule.

    One ``validate`` of the whole request finds every failure. A failure located at or under
    an unknown value is dropped (the real value may well be fine); failures elsewhere, even
    beside an unknown in the same list, are reported. ``stand_ins`` fill required fields
    that are unknown, so that what is known can still be normalized.
    """
    unknown = {n: paths for n, value in given.items() if (paths := unknown_paths(value, n))}
    failures: list[CheckFailure] = []
    inputs: dict[str, Any] = {}
    try:
        model = validate(_unknowns_as_objects(given) if unknown else given)
    except spec.SpecError as exc:
        paths = [p for ps in unknown.values() for p in ps]
        failures = [
            CheckFailure(e.field, e.error)
            for e in exc.errors
            if not any(_under(e.field, p) for p in paths)
        ]
        if not failures and unknown:
            inputs = _known_inputs(given, unknown, validate, inputs_of, stand_ins)
    else:
        inputs = inputs_of(model)
    inputs.update({name: given[name] for name in unknown})
    return inputs, failures


def _known_inputs(
    given: dict[str, Any],
    unknown: Mapping[str, Any],
    validate: Callable[[dict[str, Any]], ModelT],
    inputs_of: Callable[[ModelT], dict[str, Any]],
    stand_ins: Mapping[str, Any],
) -> dict[str, Any]:
    """Only unknowns failed: normalize what is known."""
    known = {**stand_ins, **{k: v for k, v in given.items() if k not in unknown}}
    try:
        return inputs_of(validate(known))
    except spec.SpecError:
        # A rule across fields that only the unknown value would settle: keep it as written.
        return dict(given)


# --- Inputs of our own, not of the API -------------------------------------------------------


def own_input(
    props: Mapping[str, Any],
    name: str,
    parse: Callable[[Any], Any],
    rule: str,
    inputs: dict[str, Any],
) -> list[CheckFailure]:
    """Put ``props[name]`` into ``inputs`` in normal form (``parse`` gives None when it breaks
    ``rule``); unknown values are kept as they are and checked once known."""
    value = props.get(name)
    if value is None:
        return []
    if is_unknown(value):
        inputs[name] = value
        return []
    parsed = parse(value)
    if parsed is None:
        return [CheckFailure(name, rule)]
    inputs[name] = parsed
    return []


def seconds(value: Any) -> float | None:
    """A positive number of seconds, as a float whichever way the engine sent it."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def prefixed(prefix: str) -> Callable[[Any], str | None]:
    """A parser for ids of one kind (``sbx-...``)."""
    return lambda value: value if isinstance(value, str) and value.startswith(prefix) else None


# --- Comparing and secrets -------------------------------------------------------------------


def changed(new: Mapping[str, Any], old: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """The compared inputs that differ; an unknown one may differ, so it counts."""
    return [n for n in names if is_unknown(new.get(n)) or new.get(n) != old.get(n)]


def fingerprint(purpose: str, *values: Any) -> str | None:
    """sha256 over credentials: lets diff see a new credential without anyone keeping it.

    ``purpose`` separates fingerprints of different credentials that happen to be equal.
    None when no value is set.
    """
    if not any(values):
        return None
    material = "\0".join((purpose, *(str(v or "") for v in values)))
    return hashlib.sha256(material.encode()).hexdigest()
