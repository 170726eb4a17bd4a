"""The check of a command's bad-input error: exactly one line on stderr, no traceback, naming what it should."""

from __future__ import annotations


def one_error(capsys, *words: str) -> str:  # noqa: ANN001
    """The one stderr line the command printed (after asserting it is one line, no traceback, holding ``words``)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err
