"""The exception tree: picklable, one stable code per class, codes map back to classes."""

from __future__ import annotations

import pickle
import re

import pytest

from zoo_serving import errors
from zoo_serving.errors import ServerError, ZooServingError, error_from_code


def _walk(cls: type[ZooServingError]) -> list[type[ZooServingError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_walk(sub))
    return out


# every class of the tree, found by walking it (so a class left out of __all__ is still tested)
ERROR_CLASSES = sorted(
    (c for c in _walk(ZooServingError) if c.__module__ == errors.__name__),
    key=lambda c: c.__name__,
)


def test_the_tree_has_every_documented_class() -> None:
    names = {c.__name__ for c in ERROR_CLASSES}
    for name in re.findall(r"(\w+Error)\b", errors.__doc__ or ""):
        assert name in names
    assert len(ERROR_CLASSES) == 26


def test_every_error_class_is_exported() -> None:
    exported = set(errors.__all__)
    missing = sorted(c.__name__ for c in ERROR_CLASSES if c.__name__ not in exported)
    assert not missing, f"not in zoo_serving.errors.__all__: {missing}"
    for name in errors.__all__:
        assert hasattr(errors, name)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_pickle_round_trip(cls: type[ZooServingError]) -> None:
    err = cls(f"{cls.__name__} went wrong: got 'x'", key="a.b", value=3)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert back.message == err.message
    assert str(back) == str(err)
    assert back.code == cls.code
    assert back.details == {"key": "a.b", "value": 3}


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_pickle_round_trip_without_details(cls: type[ZooServingError]) -> None:
    back = pickle.loads(pickle.dumps(cls("plain")))
    assert type(back) is cls
    assert back.message == "plain"
    assert back.details == {}


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_class_has_a_docstring_of_its_own(cls: type[ZooServingError]) -> None:
    doc = cls.__dict__.get("__doc__")
    assert doc and doc.strip()
    assert "code" in cls.__dict__, f"{cls.__name__} inherits its code"


def test_codes_are_distinct() -> None:
    codes = [c.code for c in ERROR_CLASSES]
    assert len(set(codes)) == len(codes), codes


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_error_from_code_maps_back(cls: type[ZooServingError]) -> None:
    err = error_from_code(cls.code, "what was wrong")
    assert type(err) is cls
    assert err.message == "what was wrong"
    assert err.code == cls.code


def test_unknown_code_gives_server_error_keeping_the_code() -> None:
    err = error_from_code("no_such_code", "something odd")
    assert type(err) is ServerError
    assert err.message == "something odd"
    assert err.details["code"] == "no_such_code"


def test_builtin_bases_let_callers_catch_broadly() -> None:
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.InputError, ValueError)
    assert issubclass(errors.ModelNotFoundError, FileNotFoundError)
    assert issubclass(errors.MissingDependencyError, ImportError)
    assert issubclass(errors.BrokerConnectionError, ConnectionError)
    assert issubclass(errors.ResultTimeoutError, TimeoutError)
    for sub in ("DecodeError", "ShapeError", "DtypeError", "MissingInputError"):
        assert issubclass(getattr(errors, sub), errors.InputError)


def test_repr_shows_code_and_message() -> None:
    assert repr(errors.ShapeError("bad")) == "ShapeError(code='bad_shape', message='bad')"
