"""``zoo-serve``'s command line: --version, -c on either side of the command, checked
options, and one exit code per kind of failure."""

from __future__ import annotations

import pytest

from zoo_serving import __version__
from zoo_serving.cli import build_parser, main
from zoo_serving.cli.common import EXIT_FAILED, EXIT_USAGE, exit_code
from zoo_serving.errors import ConfigError, ModelNotFoundError, ServerError


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"zoo-serve {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "app/config.yaml", "status"],
        ["status", "-c", "app/config.yaml"],
        ["--config", "other.yaml", "status", "--config", "app/config.yaml"],  # the last wins
    ],
)
def test_config_before_or_after_the_command(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).config == "app/config.yaml"


def test_config_defaults_to_config_yaml() -> None:
    assert build_parser().parse_args(["stop"]).config == "config.yaml"


@pytest.mark.parametrize("lines", ["0", "-3", "ten"])
def test_log_lines_must_be_a_positive_number(
    lines: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["log", "-n", lines])
    assert done.value.code == EXIT_USAGE
    assert f"expected a whole number of lines >= 1, got '{lines}'" in capsys.readouterr().err


def test_exit_codes_by_kind_of_error() -> None:
    assert exit_code(ConfigError("params.batch_size: ...")) == EXIT_USAGE == 2
    assert exit_code(ModelNotFoundError("no model found")) == EXIT_FAILED == 3
    assert exit_code(ServerError("stream taken")) == EXIT_FAILED
