"""Typed errors survive a trip to another process (the store's writer process pickles them back)."""

from __future__ import annotations

import pickle

import pytest

from offterm.core import errors


def every_error_type() -> list[type[errors.OfftermError]]:
    found: list[type[errors.OfftermError]] = []
    todo = [errors.OfftermError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [c for c in found if c.__module__ == errors.__name__]


def test_every_offterm_error_type_is_covered() -> None:
    names = {c.__name__ for c in every_error_type()}
    assert {"StorageDamaged", "OfflineStorageFull", "InvalidTransition", "ConfigError", "CardDeclined"} <= names


@pytest.mark.parametrize("cls", every_error_type(), ids=lambda c: c.__name__)
def test_an_error_arrives_whole_after_pickling(cls: type[errors.OfftermError]) -> None:
    error = cls.__new__(cls)
    errors.OfftermError.__init__(error, "what went wrong", path="/some/file")
    error.extra = 7  # type: ignore[attr-defined]
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls
    assert (str(back), back.code, back.message, back.details, back.args) == (
        str(error),
        error.code,
        "what went wrong",
        {"path": "/some/file"},
        ("what went wrong",),
    )
    assert back.extra == 7  # type: ignore[attr-defined]


def test_errors_with_their_own_constructors_arrive_whole() -> None:
    config = pickle.loads(pickle.dumps(errors.ConfigError("storage.sqlcipher.path", "must be a path", 3)))
    assert str(config) == str(errors.ConfigError("storage.sqlcipher.path", "must be a path", 3))
    assert config.details == {"key": "storage.sqlcipher.path"}
    declined = pickle.loads(pickle.dumps(errors.CardDeclined("no", code="card_declined", decline_code="lost_card")))
    assert (declined.code, declined.decline_code, str(declined)) == ("card_declined", "lost_card", "[card_declined] no")
    refused = pickle.loads(pickle.dumps(errors.NoLastSeenAccount("over", policy="limits")))
    assert refused.details == {"policy": "limits"}
