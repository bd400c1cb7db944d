"""Plate formats, display forms and the position-decided look-alike fixes."""
from __future__ import annotations

import pytest

from edge.plates import FORMATS_BY_NAME, apply_format_rules, display_text, match_format, normalize


@pytest.mark.parametrize(
    "text, fmt, shown",
    [
        ("AB12CDE", "uk_current", "AB12 CDE"),
        ("A123BCD", "uk_prefix", "A 123 BCD"),
        ("ZG1234AB", "hr", "ZG 1234 AB"),
        ("IEP1025", "gr", "IEP-1025"),
    ],
)
def test_formats_match_and_display(text: str, fmt: str, shown: str) -> None:
    assert match_format(text).name == fmt
    assert display_text(text, fmt) == shown


def test_normalize_keeps_only_contract_characters() -> None:
    assert normalize(" ab-12 cde\n") == "AB12CDE"


def test_valid_plate_is_left_alone() -> None:
    assert apply_format_rules("AB12CDE") == ("AB12CDE", "uk_current")


def test_digit_position_fixes_letter_lookalike() -> None:
    # UK current: positions 3-4 are digits; Z there can only be a 2. Nothing else fits this text.
    assert apply_format_rules("AB1ZCDE", [{}, {}, {}, {"2": 0.3}, {}, {}, {}])[0] == "AB12CDE"


def test_letter_position_fixes_digit_lookalike() -> None:
    # Greek: three letters then four digits; a 0 in the letter group is an O.
    fixed, fmt = apply_format_rules("I0P1025", [{}, {"O": 0.2}, {}, {}, {}, {}, {}])
    assert (fixed, fmt) == ("IOP1025", "gr")


def test_no_fix_when_reader_was_sure() -> None:
    # A confident 5 on a generic (US-style) plate is not turned into an S.
    assert apply_format_rules("5UVR090", [{"5": 0.99}, {}, {}, {}, {}, {}, {}]) == ("5UVR090", "us")


def test_no_fix_when_formats_disagree() -> None:
    # Could be UK prefix (A 812 CDE) or UK current (AB12 CDE): position does not decide, keep the read.
    assert apply_format_rules("AB1ZCDE")[0] == "AB1ZCDE"


def test_every_format_regex_compiles() -> None:
    for fmt in FORMATS_BY_NAME.values():
        assert fmt.regex.pattern.startswith("^")
