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


# --- the CLI's rendering: API names become the running command's flags -----------------------------------------


def _command(error: OvclipError):
    import click

    from ovclip.cli.common import friendly

    @click.command()
    @click.option("--batch", type=int, default=8)
    @click.option("--time", "seconds", type=float, default=1.0)
    @friendly
    def cmd(batch, seconds):
        raise error

    return cmd


def _line(error: OvclipError) -> str:
    from click.testing import CliRunner

    result = CliRunner().invoke(_command(error), [])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    return line


def test_cli_writes_api_names_as_flags():
    assert _line(OvclipError("batch=0: must be at least 1", params="batch")) == "error: --batch 0: must be at least 1"
    # the click option's Python name maps to its flag even where the two differ (--time sets `seconds`)
    line = _line(OvclipError("seconds=-1.0: raise `seconds`", params="seconds"))
    assert line == "error: --time -1.0: raise --time"


def test_cli_rewrites_only_the_named_params_in_their_api_spellings():
    e = OvclipError("/data/batch=3/x.png: batch=2 is more than the 1 batch left; lower `batch`", params="batch")
    assert _line(e) == "error: /data/batch=3/x.png: --batch 2 is more than the 1 batch left; lower --batch"
    assert _line(OvclipError("batch=0 and `batch`: unnamed", params=())) == "error: batch=0 and `batch`: unnamed"


def test_cli_maps_params_the_command_lacks_through_the_shared_table():
    from ovclip.cli.common import API_FLAGS

    assert _line(OvclipError("dataset: no labels", params="dataset")) == "error: dataset: no labels"
    e = OvclipError("needs labelled images (`dataset`)", params="dataset")
    assert _line(e) == f"error: needs labelled images ({API_FLAGS['dataset']})"
    assert _line(OvclipError("unknown=1: bad", params="unknown")) == "error: unknown=1: bad"
