"""Registry: one name per entry, registration order, a lookup that lists what is known, copies for tests."""
from __future__ import annotations

import pytest

from avengers_web.core.registry import Registry


def test_entries_are_read_like_a_dict_in_registration_order() -> None:
    colours: Registry[int] = Registry("colour")
    assert colours.add("red", 1) == 1 and colours.add("blue", 2) == 2
    assert list(colours) == ["red", "blue"] and dict(colours) == {"red": 1, "blue": 2}
    assert "red" in colours and len(colours) == 2 and colours.get("green") is None


def test_a_name_is_registered_once() -> None:
    colours: Registry[int] = Registry("colour")
    colours.add("red", 1)
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        colours.add("red", 3)
    assert colours["red"] == 1


def test_find_names_the_known_entries_when_one_is_unknown() -> None:
    colours: Registry[int] = Registry("colour")
    colours.add("red", 1)
    colours.add("blue", 2)
    assert colours.find("blue") == 2
    with pytest.raises(ValueError, match="unknown colour 'green'; known: blue, red"):
        colours.find("green")


def test_a_copy_takes_additions_without_changing_the_original_and_remove_undoes_one() -> None:
    colours: Registry[int] = Registry("colour")
    colours.add("red", 1)
    copied = colours.copy()
    copied.add("blue", 2)
    assert list(colours) == ["red"] and list(copied) == ["red", "blue"]
    assert copied.remove("blue") == 2 and list(copied) == ["red"]


def test_registering_adds_the_entry_built_from_the_function_and_gives_the_function_back() -> None:
    shouts: Registry[tuple[str, str]] = Registry("shout")

    @shouts.registering("hello", lambda function: ("loud", function("hello")))
    def upper(text: str) -> str:
        return text.upper()

    assert upper("hi") == "HI"  # the decorated function itself, unchanged
    assert shouts["hello"] == ("loud", "HELLO")
    with pytest.raises(ValueError, match="shout 'hello' is already registered"):
        shouts.registering("hello", lambda function: ("again", ""))(upper)
    assert shouts["hello"] == ("loud", "HELLO")
