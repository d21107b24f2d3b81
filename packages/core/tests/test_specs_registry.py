"""Specs and Registry: validation, lazy loading, ordering, and the error messages users read."""

from __future__ import annotations

import sys

import pytest
from pydantic import ValidationError

from cnnkit.core.registry import DuplicateNameError, Registry, UnknownNameError
from cnnkit.core.specs import DatasetSpec, MethodSpec, MetricSpec, ModelSpec, SpecLoadError


def method(name: str, target: str = "collections:OrderedDict", kind: str = "regularizer") -> MethodSpec:
    return MethodSpec(name=name, kind=kind, target=target, summary=f"{name} summary")


def test_method_spec_is_frozen_and_rejects_unknown_fields() -> None:
    spec = method("swd")
    with pytest.raises(ValidationError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        MethodSpec(name="x", kind="pruner", target="a:b", colour="red")  # type: ignore[call-arg]


@pytest.mark.parametrize("kind", ["regularizer", "pruner", "efficiency"])
def test_method_spec_accepts_the_three_kinds(kind: str) -> None:
    assert method("m", kind=kind).kind == kind


def test_method_spec_rejects_other_kinds_naming_the_allowed_ones() -> None:
    with pytest.raises(ValidationError) as info:
        method("m", kind="optimizer")
    text = str(info.value)
    assert "kind" in text and "'regularizer'" in text and "'pruner'" in text and "'efficiency'" in text


@pytest.mark.parametrize("bad", ["no_colon", "pkg.mod:", ":Obj", "pkg mod:Obj", "1pkg:Obj"])
def test_target_must_be_module_colon_object(bad: str) -> None:
    with pytest.raises(ValidationError, match="target"):
        method("m", target=bad)


@pytest.mark.parametrize("bad", ["", "Upper", "with space", "9lives"])
def test_names_are_lower_case_identifiers(bad: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        method(bad)


def test_load_imports_the_target_only_when_called() -> None:
    module = "json.decoder"
    sys.modules.pop(module, None)
    spec = method("lazy", target=f"{module}:JSONDecoder")
    assert module not in sys.modules
    cls = spec.load()
    assert module in sys.modules and cls.__name__ == "JSONDecoder"
    assert spec.load() is cls


def test_load_resolves_dotted_attributes() -> None:
    assert method("m", target="os:path.join").load() is __import__("os").path.join


def test_load_errors_name_the_target() -> None:
    with pytest.raises(SpecLoadError, match="no_such_module_xyz"):
        method("m", target="no_such_module_xyz:Thing").load()
    with pytest.raises(SpecLoadError, match="'Nope'"):
        method("m", target="json:Nope").load()


def test_other_specs_validate_their_fields() -> None:
    assert ModelSpec(name="lenet", target="a:b", input_shape=(1, 28, 28), num_classes=10).input_shape == (
        1,
        28,
        28,
    )
    with pytest.raises(ValidationError, match="input_shape"):
        ModelSpec(name="lenet", target="a:b", input_shape=(28, 28))
    with pytest.raises(ValidationError, match="num_classes"):
        DatasetSpec(name="d", target="a:b", num_classes=0)
    assert MetricSpec(name="top1", target="a:b", unit="%").higher_is_better is True


def test_registry_iterates_sorted_and_supports_in_and_len() -> None:
    registry = Registry("method", MethodSpec)
    for name in ["sbn", "swd", "cops", "a-1"]:
        registry.add(method(name), source="test")
    assert [s.name for s in registry] == ["a-1", "cops", "sbn", "swd"]
    assert "swd" in registry and "nope" not in registry and len(registry) == 4
    assert registry.get("cops").name == "cops"


def test_registry_records_sources() -> None:
    registry = Registry("method", MethodSpec)
    registry.add(method("swd"), source="cnnkit-regularizers 0.1.0")
    registry.default_source = "plugin-x 1.0"
    registry.add(method("sfd"))
    assert registry.source("swd") == "cnnkit-regularizers 0.1.0"
    assert registry.source("sfd") == "plugin-x 1.0"


def test_duplicate_name_names_both_sources() -> None:
    registry = Registry("method", MethodSpec)
    registry.add(method("swd"), source="cnnkit-regularizers 0.1.0")
    with pytest.raises(DuplicateNameError) as info:
        registry.add(method("swd"), source="thirdparty 2.0")
    assert "cnnkit-regularizers 0.1.0" in str(info.value) and "thirdparty 2.0" in str(info.value)
    assert registry.source("swd") == "cnnkit-regularizers 0.1.0"


def test_unknown_name_suggests_close_matches_and_lists_installed() -> None:
    registry = Registry("method", MethodSpec)
    for name in ["swd", "sfd", "sbn", "snip"]:
        registry.add(method(name), source="test")
    with pytest.raises(UnknownNameError) as info:
        registry.get("swdd")
    text = str(info.value)
    assert "Did you mean 'swd'" in text
    assert "Installed methods: sbn, sfd, snip, swd" in text
    with pytest.raises(KeyError):  # still a KeyError for callers that catch that
        registry.get("zzz")


def test_unknown_name_in_an_empty_registry_says_so() -> None:
    with pytest.raises(UnknownNameError, match="none"):
        Registry("model", ModelSpec).get("resnet18")


def test_registry_rejects_specs_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="MethodSpec"):
        Registry("method", MethodSpec).add(ModelSpec(name="m", target="a:b"))  # type: ignore[arg-type]
