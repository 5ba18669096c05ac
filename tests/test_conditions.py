"""The conditional headers of a context write: a version, a clear 400, never anything else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpdb.errors import InvalidHeader
from mcpdb.node.http.conditions import MAX_VERSION, expected_version


@pytest.mark.parametrize(
    ("if_match", "if_none_match", "expected"),
    [(None, None, None), ("7", None, 7), ('"7"', None, 7), ('W/"7"', None, 7), (" 12 ", None, 12), (None, "*", 0)],
)
def test_versions_and_create_only(if_match: str | None, if_none_match: str | None, expected: int | None) -> None:
    assert expected_version(if_match, if_none_match) == expected


@pytest.mark.parametrize("if_match", ["\xb2", "1\xb9", "\u0663", "9" * 5000, str(MAX_VERSION + 1), "-1", "", "1.0"])
def test_what_is_not_an_ascii_64_bit_version_is_a_400(if_match: str) -> None:
    # "²" and "١" are str.isdigit() but not int(); 5000 digits are int() but no version
    with pytest.raises(InvalidHeader):
        expected_version(if_match, None)


@given(st.text(max_size=40))
def test_any_header_text_gives_a_version_or_a_400(if_match: str) -> None:
    try:
        version = expected_version(if_match, None)
    except InvalidHeader:
        return
    assert version is not None and 0 <= version <= MAX_VERSION
