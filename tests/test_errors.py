"""ovclip.errors: the first-line helper and the API parameter names an OvclipError carries."""

from __future__ import annotations

import pytest

from ovclip.errors import OvclipError, first_line


def test_first_line_skips_blank_lines_and_strips():
    assert first_line(ValueError("\n  \n  bad shape [1, 3]  \nat frame 2\n")) == "bad shape [1, 3]"


def test_first_line_empty_message_gives_type_name_or_default():
    assert first_line(EOFError()) == "EOFError"
    assert first_line(EOFError(""), default="") == ""


def test_first_line_skips_boilerplate_and_cuts():
    e = RuntimeError("Weights only load failed.\nUnpickling stopped: bad opcode\nmore")
    assert first_line(e, skip=("Weights only",)) == "Unpickling stopped: bad opcode"
    assert first_line(e, skip=("Weights only",), limit=10) == "Unpickling"
    assert first_line(RuntimeError("Weights only load failed."), skip=("Weights",)) == "RuntimeError"


@pytest.mark.parametrize(("params", "expected"), [("batch", ("batch",)), (["a", "b"], ("a", "b")), ((), ())])
def test_ovclip_error_keeps_message_and_params(params, expected):
    e = OvclipError("batch=0: must be at least 1", params=params)
    assert str(e) == "batch=0: must be at least 1"
    assert e.params == expected
