"""Plain-text tables for the terminal (the `mmlib` command's listings and the probe's layer summaries), and the
byte counts and times they and the web view show."""

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


def human_size(size: int) -> str:
    """A byte count as people read it: `512 B`, `12.3 KiB`, `4.0 MiB`, `1.2 GiB`."""
    if size < 1024:
        return f"{size} B"
    value, unit = size / 1024, "KiB"
    for larger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"


def short_time(created: Optional[str]) -> str:
    """An ISO 8601 UTC time as `YYYY-MM-DD HH:MM:SS` ("-" for none)."""
    return created[:19].replace("T", " ") if created else "-"
