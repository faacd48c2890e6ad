"""How one setting is declared: its variable, type, default, range and help, in one place.

Every ``NPCFLOW_*`` variable is one :func:`setting` on a field of a :class:`Group` (pydantic
models): the variable is the field's validation alias, the type and range are pydantic's, the help
is the field's description. :mod:`pipeline.config.sources` reads the variables by those aliases,
``npcflow config show`` and ``docs/settings.md`` list them from the same declarations, so nothing
about a setting is written twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.fields import FieldInfo

from topics.errors import UserFacingError


class ConfigError(UserFacingError, RuntimeError):
    """A setting is missing or malformed; the message says which and how to fix it."""


class Group(BaseModel):
    """A group of settings (one concept: Kafka, a tier worker, an engine ...).

    Built from field names in code (``KafkaOptions(fetch_max_wait_ms=5)``) and from variable names
    by :meth:`pipeline.config.Settings.from_env`. Constructing one never reads the environment.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        arbitrary_types_allowed=True,
    )

    def with_(self, **changes: Any) -> Any:
        """A copy with some fields replaced, validated like the original (tests, benchmarks, demo)."""
        return type(self).model_validate({**dict(self), **changes})


def setting(
    env: str,
    default: Any = None,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | None = None,
    secret: bool = False,
    shown_default: str | None = None,
    **constraints: Any,
) -> Any:
    """One setting: ``env`` is its variable; ``constraints`` are pydantic's (``ge``, ``le`` ...).

    ``secret`` values are masked by ``config show``; ``shown_default`` is how the docs describe a
    default that is not a plain value (``the packaged policy.yaml``).
    """
    extra: dict[str, Any] = {"secret": secret}
    if shown_default is not None:
        extra["shown_default"] = shown_default
    if default_factory is not None:
        return Field(
            default_factory=default_factory,
            validation_alias=env,
            description=help,
            json_schema_extra=extra,
            **constraints,
        )
    return Field(default, validation_alias=env, description=help, json_schema_extra=extra, **constraints)


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def split_names(value: Any) -> Any:
    """``a,b`` → ("a", "b"); ``off``/``none``/``0`` → () (a tuple or list passes as it is)."""
    if not isinstance(value, str):
        return value
    if value.strip().lower() in ("off", "none", "0"):
        return ()
    return tuple(n.strip() for n in value.split(",") if n.strip())


def _number(value: Any) -> Any:
    """``"3"`` → 3, so a ``Literal`` of numbers takes a variable's text."""
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


def render(value: Any) -> str:
    """A value as its variable would be written (``config show``, docs, error hints)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ",".join(render(v) for v in value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}={'|'.join(v) if isinstance(v, tuple) else render(v)}" for k, v in value.items())
    return str(value)


def shown_default(field: FieldInfo) -> str:
    """The default as the docs and errors show it ("" when there is none)."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "shown_default" in extra:
        return str(extra["shown_default"])
    return "" if field.default_factory is not None else render(field.default)


def allowed(field: FieldInfo) -> str:
    """What a setting accepts, in words: ``between 1 and 65535``, ``more than 0``, ``uvloop or asyncio``."""
    low = high = None
    low_word, high_word = "at least", "at most"
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            low = rule.ge
        elif isinstance(rule, annotated_types.Gt):
            low, low_word = rule.gt, "more than"
        elif isinstance(rule, annotated_types.Le):
            high = rule.le
        elif isinstance(rule, annotated_types.Lt):
            high, high_word = rule.lt, "less than"
    if low is not None and high is not None:
        if (low_word, high_word) == ("at least", "at most"):
            return f"between {render(low)} and {render(high)}"
        return f"{low_word} {render(low)} and {high_word} {render(high)}"
    if low is not None:
        return f"{low_word} {render(low)}"
    if high is not None:
        return f"{high_word} {render(high)}"
    if field.annotation is bool:
        return "1 or 0"
    choices = [render(c) for c in _choices(field.annotation)]
    if len(choices) > 1:
        return f"{', '.join(choices[:-1])} or {choices[-1]}"
    return ""


def _choices(kind: Any) -> tuple[Any, ...]:
    """The values of the ``Literal`` inside ``kind`` (through ``Annotated``, ``| None``, ``tuple[...]``)."""
    if get_origin(kind) is Literal:
        return get_args(kind)
    for inner in get_args(kind):
        if found := _choices(inner):
            return found
    return ()


#: A number choice (``Literal[1, 3]``) given as text.
Number = BeforeValidator(_number)
#: A choice written in any case (``ASYNCIO``, ``Chat``): use with a ``Literal`` of lower-case names.
Lower = BeforeValidator(_lower)
Upper = BeforeValidator(_upper)
#: A comma-separated list of names; ``off`` or ``none`` for an empty one.
Names = Annotated[tuple[str, ...], BeforeValidator(split_names)]
