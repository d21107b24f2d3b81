"""Method configuration: frozen pydantic models and human-readable validation errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["ConfigError", "MethodConfig", "describe_field", "validate_config"]


class MethodConfig(BaseModel):
    """Base class of every method's ``Config``: frozen, unknown fields rejected.

    Subclasses declare fields with their paper defaults and validated ranges, e.g.
    ``p: float = Field(0.1, ge=0.0, lt=1.0, description="drop probability")``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")


class ConfigError(ValueError):
    """A method (or other) configuration is invalid. The message names each bad field and what it allows.

    Attributes:
        errors: one ``(field, message)`` pair per problem.
    """

    def __init__(self, owner: str, errors: list[tuple[str, str]]) -> None:
        self.owner = owner
        self.errors = errors
        lines = "\n".join(f"  - {field}: {message}" for field, message in errors)
        super().__init__(f"invalid configuration for {owner}:\n{lines}")


def describe_field(config_type: type[BaseModel], name: str) -> str:
    """``"0 <= p < 1"``, ``"one of '1d', '2d'"`` or the type name: what ``name`` accepts."""
    schema = config_type.model_json_schema()
    prop = schema.get("properties", {}).get(name)
    if prop is None:
        return "no such field"
    return _describe_schema(prop, name, schema.get("$defs", {}))


def _describe_schema(prop: dict[str, Any], name: str, defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        prop = defs.get(prop["$ref"].rsplit("/", 1)[-1], prop)
    if "enum" in prop:
        return "one of " + ", ".join(repr(v) for v in prop["enum"])
    if "const" in prop:
        return f"exactly {prop['const']!r}"
    if "anyOf" in prop:
        return " or ".join(_describe_schema(p, name, defs) for p in prop["anyOf"])
    bounds = []
    for key, op in (("minimum", "<="), ("exclusiveMinimum", "<")):
        if key in prop:
            bounds.append(f"{prop[key]} {op} ")
    text = "".join(bounds) + (name if bounds or _has_upper(prop) else "")
    for key, op in (("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in prop:
            text += f" {op} {prop[key]}"
    kind = prop.get("type", "value")
    if kind == "array" and "items" in prop:
        kind = f"list of ({_describe_schema(prop['items'], 'item', defs)})"
    if "minLength" in prop or "maxLength" in prop:
        kind += f" of length {prop.get('minLength', 0)}..{prop.get('maxLength', 'any')}"
    return f"{kind} with {text}" if text else kind


def _has_upper(prop: dict[str, Any]) -> bool:
    return "maximum" in prop or "exclusiveMaximum" in prop


def validate_config(config_type: type[MethodConfig], values: dict[str, Any], owner: str) -> MethodConfig:
    """Build ``config_type(**values)``; on failure raise :class:`ConfigError` naming field and range."""
    try:
        return config_type(**values)
    except ValidationError as exc:
        problems: list[tuple[str, str]] = []
        for err in exc.errors():
            field = ".".join(str(part) for part in err["loc"]) or "<config>"
            top = str(err["loc"][0]) if err["loc"] else ""
            if err["type"] == "extra_forbidden":
                allowed = ", ".join(config_type.model_fields) or "none"
                problems.append((field, f"unknown field; allowed fields: {allowed}"))
                continue
            allowed = describe_field(config_type, top) if top else ""
            got = err.get("input")
            problems.append((field, f"{err['msg']} (got {got!r}; allowed: {allowed})"))
        raise ConfigError(owner, problems) from None
