"""The documentation: the site builds with warnings as errors, the Python examples of its pages run, the README stays
short and its links into docs/ resolve, and the CLI reference has a section for every command.

Examples: the Python code blocks of one page run in order, as one script, in a fresh process whose working
directory is a fresh temporary directory (so `./models` is a new store). A block that is not meant to run is marked
by an HTML comment on the line just before its fence (blank lines aside), with the reason in parentheses:

    <!-- docs-test: skip (needs a LightningModule and data; tests/integrations/test_lightning.py runs it) -->
"""

import argparse
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from mmlib.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 150
SKIP_MARKER = re.compile(r"<!--\s*docs-test:\s*skip\b(?P<reason>.*?)-->")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<language>[\w+-]*)")
PYTHON = ("python", "py")
# Pages that show the Python API: each must keep at least one example that runs.
API_PAGES = ("getting-started.md", "checkpoints.md", "concepts/refs.md", "concepts/approaches.md")
EXAMPLE_TIMEOUT_S = 180
BUILD_TIMEOUT_S = 180
# What an example must not inherit from the shell that runs the tests: it makes its own store.
STORE_VARIABLES = ("MMLIB_STORE", "MMLIB_BLOB_DIR", "MMLIB_CONFIG")


@dataclass(frozen=True)
class CodeBlock:
    """A fenced code block of a docs page: its language, code (dedented), the lines of its opening and closing
    fences, and whether a skip marker stands just before it."""

    language: str
    code: str
    line: int
    end: int
    skipped: bool


def code_blocks(page: Path) -> list[CodeBlock]:
    """The fenced code blocks of `page`, outermost only (a block shown inside a longer fence is text of that one)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening["fence"]
        closing = re.compile(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = next((j for j in range(index + 1, len(lines)) if closing.match(lines[j])), len(lines))
        before = next((lines[j].strip() for j in range(index - 1, -1, -1) if lines[j].strip()), "")
        code = textwrap.dedent("\n".join(lines[index + 1:end]))
        blocks.append(CodeBlock(opening["language"].lower(), code, index + 1, end + 1,
                                SKIP_MARKER.fullmatch(before) is not None))
        index = end + 1
    return blocks


def runnable(page: Path) -> list[CodeBlock]:
    """The Python blocks of `page` that are not marked to skip."""
    return [block for block in code_blocks(page) if block.language in PYTHON and not block.skipped]


def docs_pages() -> list[Path]:
    """Every page under docs/."""
    return sorted(DOCS.rglob("*.md"))


def _relative(page: Path) -> str:
    """The page's path under docs/, as the site and the messages name it."""
    return page.relative_to(DOCS).as_posix()


PAGES_WITH_EXAMPLES = [page for page in docs_pages() if runnable(page)]


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict` succeeds: no broken link or anchor, no page missing from the nav, no docstring that
    mkdocstrings cannot render; and the benchmark plots are published with the site."""
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                            cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    for plot in sorted((ROOT / "benchmarks" / "results").rglob("*.png")):
        assert (site / plot.relative_to(ROOT)).is_file(), f"{plot.relative_to(ROOT)} is not in the built site"
    assert "benchmarks/results/storage.png" in (site / "benchmark" / "index.html").read_text(encoding="utf-8")
    api = (site / "reference" / "mmlib" / "index.html").read_text(encoding="utf-8")
    assert 'id="mmlib.api.save"' in api and 'id="mmlib.api.Version"' in api, "the API reference lost its members"


def test_api_pages_have_examples_that_run() -> None:
    """The pages that teach the Python API keep examples that run (a parser that finds none would test nothing)."""
    for name in API_PAGES:
        assert runnable(DOCS / name), f"docs/{name} has no Python example that runs"


def test_skip_markers_stand_before_a_python_block_and_say_why() -> None:
    """Each skip marker gives a reason and stands just before a Python block (a stray one would skip nothing)."""
    for page in docs_pages():
        lines = page.read_text(encoding="utf-8").splitlines()
        blocks = code_blocks(page)
        skipped_lines = {block.line for block in blocks if block.skipped and block.language in PYTHON}
        shown = {number for block in blocks for number in range(block.line, block.end + 1)}  # markers shown as code
        for number, line in enumerate(lines, start=1):
            marker = SKIP_MARKER.fullmatch(line.strip())
            if marker is None or number in shown:
                continue
            assert re.fullmatch(r"\s*\(.+\)\s*", marker["reason"]), \
                f"docs/{_relative(page)}:{number}: say why in parentheses: <!-- docs-test: skip (why) -->"
            following = next((n for n in range(number + 1, len(lines) + 1) if lines[n - 1].strip()), None)
            assert following in skipped_lines, \
                f"docs/{_relative(page)}:{number}: a skip marker must stand just before a ```python block"


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=_relative)
def test_python_examples_run(page: Path, tmp_path: Path) -> None:
    """The page's Python blocks, in order, run as one script in a fresh process and a fresh directory."""
    blocks = runnable(page)
    script, starts = [], []  # starts: (first script line of a block, its fence's line in the page)
    for block in blocks:
        starts.append((len(script) + 2, block.line))
        script += [f"# docs/{_relative(page)}, the block at line {block.line}", *block.code.splitlines()]
    path = tmp_path / "example.py"
    path.write_text("\n".join(script) + "\n", encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key not in STORE_VARIABLES}
    result = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=EXAMPLE_TIMEOUT_S)
    if result.returncode != 0:
        failed = [int(line) for line in re.findall(rf'File "{re.escape(str(path))}", line (\d+)', result.stderr)]
        where = ""
        if failed:
            start, fence = max(((s, f) for s, f in starts if s <= failed[-1]), default=starts[0])
            where = f" at line {fence + 1 + failed[-1] - start} (in the block at line {fence})"
        pytest.fail(f"an example of docs/{_relative(page)} failed{where}:\n{result.stderr[-3000:]}")


def test_readme_is_short_and_its_links_resolve() -> None:
    """The README has at most 150 lines, links into docs/, and every relative link of it names a file that exists."""
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details into docs/ (at most " \
                                      f"{README_MAX_LINES})"
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [target for target in targets if not re.match(r"[a-z][a-z0-9+.-]*:", target)
                and not target.startswith("#")]
    into_docs = [target for target in relative if target.startswith("docs/")]
    assert "docs/getting-started.md" in into_docs and len(into_docs) >= 10, "the README should link into docs/"
    missing = [target for target in relative if not (ROOT / target.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_readme_test_command_is_what_ci_runs() -> None:
    """The README's test command is the command .ci/run runs, verbatim."""
    ci_command = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci_command in README.read_text(encoding="utf-8")


def _subcommands() -> list[str]:
    """The subcommands `mmlib` accepts."""
    parser = build_parser()
    return [name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices]


def test_cli_reference_has_a_section_for_every_command() -> None:
    """docs/cli.md has a heading `mmlib COMMAND` for each subcommand of the parser, so a new command without docs
    fails here."""
    headings = [line for line in (DOCS / "cli.md").read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    commands = _subcommands()
    assert "ls" in commands and "gc" in commands, f"could not read the subcommands from the parser: {commands}"
    missing = [name for name in commands if not any(re.search(rf"\bmmlib {re.escape(name)}\b", h) for h in headings)]
    assert not missing, f"docs/cli.md has no section for: {', '.join(missing)}"
