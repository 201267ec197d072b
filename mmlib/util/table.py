"""Plain-text tables for the terminal: the `mmlib` command's listings and the probe's layer summaries."""

from typing import Mapping, Optional, Sequence

GREEN = "\033[32m"
RED = "\033[31m"
RESET = "\033[0m"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = (), *,
                 colours: Optional[Mapping[str, str]] = None) -> str:
    """Columns padded to their widest cell, two spaces apart, trailing spaces stripped from each line.

    Columns in `right` are right-aligned (numbers). With `colours`, a body cell whose text is a key is wrapped in
    that ANSI colour code; its padding is computed from the plain text, so columns stay aligned on a terminal.
    """
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str], cell_colours: Mapping[str, str]) -> str:
        padded = []
        for index, (cell, width) in enumerate(zip(cells, widths)):
            text = str(cell)
            shown = f"{cell_colours[text]}{text}{RESET}" if text in cell_colours else text
            padding = " " * (width - len(text))
            padded.append(padding + shown if index in right else shown + padding)
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers, {})] + [line(row, colours or {}) for row in rows])
