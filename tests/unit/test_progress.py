"""The stderr progress bar."""

from __future__ import annotations

import io

from zoo_serving.progress import ProgressBar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_redraws_on_a_terminal_and_ends_with_a_summary() -> None:
    out = _Tty()
    with ProgressBar(4, "converting", unit="layers", stream=out, width=4) as bar:
        for i in range(1, 5):
            bar(i, 4)
    text = out.getvalue()
    assert "\rconverting [####] 4/4 layers" in text
    assert text.endswith("s\n") and " in " in text.splitlines()[-1]


def test_bar_is_one_line_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = ProgressBar(0, "warm-up", stream=out, width=2)
    for i in range(1, 11):
        bar(i, 10)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warm-up [##] 10/10 in ")
