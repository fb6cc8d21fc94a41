"""Assertions shared by the command-line tests."""


def assert_one_line_error(result, message, code=1):
    """Exit code, and one line ``error: ...`` on stderr (besides the library's warnings)."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], result.stderr
    assert "Traceback" not in result.output
