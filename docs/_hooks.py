"""MkDocs hook: publish the committed benchmark results (`benchmarks/results/`) with the site.

The benchmark page shows the plots and links the result tables where the benchmark writes them, so a refreshed
run needs no copy under `docs/` that could go stale.
"""

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files, InclusionLevel

RESULTS = "benchmarks/results"
PUBLISHED = (".png", ".md", ".json")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add every published result file under `benchmarks/results/` at the same path in the site; a result table
    the nav does not list is built all the same, without a warning (a new benchmark need not edit mkdocs.yml)."""
    root = Path(config.config_file_path).parent
    for path in sorted((root / RESULTS).rglob("*")):
        if path.is_file() and path.suffix in PUBLISHED:
            files.append(File(path.relative_to(root).as_posix(), src_dir=str(root), dest_dir=config.site_dir,
                              use_directory_urls=config.use_directory_urls, inclusion=InclusionLevel.NOT_IN_NAV))
    return files
