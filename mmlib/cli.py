"""The `mmlib` command: list, show, diff, recover, verify, remove and garbage-collect the models of a store, and
serve a web view of it.

Only this module configures logging handlers (on the `mmlib` logger, for the duration of `main`).
"""

import argparse
import importlib
import json
import logging
import os
import sys
import warnings
from dataclasses import asdict, fields
from datetime import datetime, timezone
from typing import Any, Callable, Optional, Sequence, Union

from mmlib import __version__, maintenance, refs
from mmlib.constants import PROGRESS_LOGGER
from mmlib.errors import InvalidIdError, MMLibError, ModelNotFoundError, StoreUnavailableError
from mmlib.persistence.store import Store, open_store
from mmlib.retention import Retention, prune
from mmlib.schema.model_info import PRUNED
from mmlib.util.table import format_table, human_size, short_time

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
STORE_ENV = "MMLIB_STORE"
BLOB_DIR_ENV = "MMLIB_BLOB_DIR"
BENCHMARK_MODULE = "benchmarks.run"

_EPILOG = f"""\
stores:
  a directory                 SQLite + files inside it (one machine, no server)
  mongodb://HOST:PORT/DB      MongoDB documents, blobs in GridFS of the same database
                              (database DB, default mmlib); nodes need only the URI
  mongodb://... --blob-dir D  MongoDB documents, blobs in a directory all nodes share
  mongodb://... --blob-dir s3://BUCKET/PREFIX
                              MongoDB documents, blobs in S3-compatible object storage
                              (endpoint and credentials: the standard AWS_* variables)
  --store may be replaced by the {STORE_ENV} environment variable ({BLOB_DIR_ENV} for --blob-dir).

examples:
  mmlib --store ./models ls
  mmlib --store ./models show 3f2a9c            (a unique prefix of an id, as git takes)
  mmlib --store mongodb://db.example:27017/team tree
  mmlib --store ./models recover 3f2a9c -o weights.safetensors
  mmlib --store ./models rm 3f2a9c --with-descendants
  {STORE_ENV}=./models mmlib verify --json
  mmlib --store ./models gc --dry-run

exit codes:
  0  success
  1  problems found (verify), an integrity error, or a refused removal (rm)
  2  usage error or unknown model id
  3  store unavailable (missing directory, unreachable server)
"""


class _UsageError(Exception):
    """A command line that names something unusable (reported with exit code 2)."""


REFERENCE_HELP = "a model: its id, a unique prefix of it, NAME (the latest version), NAME:vN or NAME:ALIAS"


def _print_json(value) -> None:
    print(json.dumps(value, indent=2))


def _open(args: argparse.Namespace) -> Store:
    """The existing store named by --store / MMLIB_STORE (a directory or a MongoDB URI); never creates one.

    No command saves models, so none may create a store: a mistyped path or blob directory is reported as such.
    """
    location = args.store or os.environ.get(STORE_ENV)
    blob_dir = args.blob_dir or os.environ.get(BLOB_DIR_ENV)
    if not location:
        raise _UsageError(f"no store given: pass --store DIR_OR_URI or set {STORE_ENV}")
    store = open_store(location, blob_dir=blob_dir, create=False)
    logger.debug("opened store %r", store)
    return store


def _damaged_entries(keys: Sequence[str], damaged: list[maintenance.DamagedModel]) -> list[dict]:
    """JSON entries for damaged models: the keys of a healthy entry, unknown ones None, and what is damaged."""
    return [{**dict.fromkeys(keys), "model_id": entry.model_id, "damaged": entry.problem} for entry in damaged]


def _damage_lines(damaged: list[maintenance.DamagedModel]) -> list[str]:
    """One line per damaged model, for below a table or tree."""
    return [f"damaged model {entry.model_id}: {entry.problem}" for entry in damaged]


def _damaged_exit(count: int, total: int) -> int:
    """The one stderr line and the exit code of a listing that found `count` damaged models among `total`."""
    return _fail(f"{count} of {total} model(s) damaged (marked above): run `mmlib verify` for what to do",
                 EXIT_PROBLEMS)


def _tag_filters(given: list[str]) -> dict[str, str]:
    """KEY=VALUE arguments as a dict."""
    pairs = [item.partition("=") for item in given]
    if any(not key or not separator for key, separator, _ in pairs):
        raise _UsageError(f"tags are given as KEY=VALUE, got {given!r}")
    return {key: value for key, _, value in pairs}


def _listed(args: argparse.Namespace, models: list, named: dict) -> list:
    """The models `ls` shows: those of `--name` with every `--tag`, ordered by `--sort` (newest first by default;
    models without the sort key last)."""
    wanted = _tag_filters(args.tag)
    if args.name is not None or wanted:
        models = [m for m in models if m.model_id in named and args.name in (None, named[m.model_id].name)
                  and all(str(named[m.model_id].tags.get(key)) == value for key, value in wanted.items())]
    if args.sort is None:
        return models
    group, _, key = args.sort.lstrip("-").partition(".")
    if group not in ("metrics", "tags") or not key:
        raise _UsageError(f"--sort takes metrics.KEY or tags.KEY (with a leading - for descending), got {args.sort!r}")

    def value(model: maintenance.ModelSummary) -> Any:
        return getattr(named[model.model_id], group).get(key) if model.model_id in named else None

    present = [m for m in models if value(m) is not None]
    return sorted(present, key=value, reverse=args.sort.startswith("-")) + [m for m in models if value(m) is None]


def _cmd_ls(args: argparse.Namespace) -> int:
    store = _open(args)
    survey = maintenance.survey(store)
    named = refs.named_versions(store.dict_pers_service)
    training_states = refs.training_state_ids(named)
    models = [model for model in survey.models if model.model_id not in training_states]
    models, damaged = _listed(args, models, named), survey.damaged
    if args.json:
        _print_json([{**asdict(model), **(named[model.model_id]._asdict() if model.model_id in named else {})}
                     for model in models]
                    + _damaged_entries([f.name for f in fields(maintenance.ModelSummary)], damaged))
    elif not models and not damaged:
        print("no models in this store" if not (args.name or args.tag) else "no model matches")
    else:
        short = maintenance.abbreviated([m.model_id for m in models] + [m.base_id for m in models if m.base_id]
                                        + [entry.model_id for entry in damaged])
        rows: list[tuple[str, ...]] = [(short[m.model_id], m.store_type, short[m.base_id] if m.base_id else "-",
                                        short_time(m.created), human_size(m.size)) for m in models]
        rows += [(short[entry.model_id], "DAMAGED", "-", "-", "-") for entry in damaged]
        header: tuple[str, ...] = ("ID", "TYPE", "BASE", "CREATED (UTC)", "SIZE")
        listed = [m.model_id for m in models] + [entry.model_id for entry in damaged]
        if named:  # a store with names gets their columns
            header += ("NAME", "VERSION", "ALIASES")
            rows = [(*row, *_name_columns(named.get(model_id))) for row, model_id in zip(rows, listed)]
        if args.name is not None and any(named[model_id].checkpoint for model_id in listed if model_id in named):
            extra_header, columns = _checkpoint_columns(store, args.name, [named.get(model_id) for model_id in listed])
            header += extra_header
            rows = [(*row, *extra) for row, extra in zip(rows, columns)]
        print(format_table(header, rows, right=(4,)))
        if damaged:
            print("\n" + "\n".join(_damage_lines(damaged)))
    return _damaged_exit(len(damaged), len(models) + len(damaged)) if damaged else EXIT_OK


def _checkpoint_columns(store: Store, name: str, versions: list[Optional[refs.NamedVersion]]
                        ) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """STEP, the monitored metric and KEPT (the rules that keep each version) for the checkpoints of `name`, under
    the retention its newest checkpoint was saved with."""
    dps = store.dict_pers_service
    latest = refs.latest_record(dps, name) or {}
    retention = Retention(**(latest.get(refs.CHECKPOINT) or {}).get("retention", {}))
    reasons = retention.reasons(refs.live_records(dps, name), refs.aliased_numbers(dps, name))
    monitor = retention.monitor
    header = ("STEP",) + ((monitor.upper(),) if monitor else ()) + ("KEPT BY",)
    columns = []
    for version in versions:
        step = str(version.checkpoint.get("step", "-")) if version and version.checkpoint else "-"
        metric = (f"{version.metrics[monitor]:.6g}" if version and monitor in version.metrics else "-",) \
            if monitor else ()
        kept = ",".join(reasons.get(version.number, ["-"])) if version else "-"
        columns.append((step, *metric, kept))
    return header, columns


def _or_dash(value: Any) -> Any:
    return "-" if value is None else value


def _name_columns(version: Optional[refs.NamedVersion]) -> tuple[str, str, str]:
    """NAME, VERSION and ALIASES of a model in `ls` ("-" for a model saved without a name)."""
    if version is None:
        return "-", "-", "-"
    return version.name, f"v{version.number}", ",".join(version.aliases) or "-"


def _cmd_prune(args: argparse.Namespace) -> int:
    retention = Retention(args.keep_last, args.keep_best, args.monitor, args.mode, args.keep_every)
    if not retention.active:
        raise _UsageError("give at least one rule: --keep-last N, with --keep-best K --monitor METRIC or --keep-every "
                          "STEPS")
    pruned = prune(_open(args), args.name, retention, dry_run=args.dry_run)
    verb = "would prune" if args.dry_run else "pruned"
    for record in pruned:
        print(f"{verb} {args.name}:v{record['number']} ({record['model_id'][:maintenance.ABBREVIATED]})")
    print(f"{verb} {len(pruned)} version(s) of {args.name}" + ("" if args.dry_run or not pruned else
                                                                "; their weights that no kept version reads are "
                                                                "reclaimed"))
    return EXIT_OK


def _cmd_alias(args: argparse.Namespace) -> int:
    store = _open(args)
    if args.delete:
        name = args.reference.partition(":")[0]
        refs.delete_alias(store.dict_pers_service, refs.check_name(name), args.alias)
        print(f"deleted alias {name}:{args.alias}")
        return EXIT_OK
    model_id = maintenance.resolve_model_id(store, args.reference)
    version = refs.named_or_refused(store.dict_pers_service, model_id)
    refs.set_alias(store.dict_pers_service, *version, args.alias)
    print(f"{version[0]}:{args.alias} -> {version[0]}:v{version[1]} ({model_id[:maintenance.ABBREVIATED]})")
    return EXIT_OK


def _cmd_tag(args: argparse.Namespace) -> int:
    store = _open(args)
    version = refs.named_or_refused(store.dict_pers_service, maintenance.resolve_model_id(store, args.reference))
    refs.update_version(store.dict_pers_service, *version, "tags", _tag_filters(args.tags))
    print(f"tagged {version[0]}:v{version[1]}: {refs.version_record(store.dict_pers_service, *version)['tags']}")
    return EXIT_OK


def _size_lines(sizes: dict) -> list[tuple[str, str]]:
    return [("  " * depth + key, human_size(size)) for depth, key, size in maintenance.size_rows(sizes)]


def _cmd_show(args: argparse.Namespace) -> int:
    store = _open(args)
    dps = store.dict_pers_service
    details = maintenance.model_details(store, maintenance.resolve_model_id(store, args.model_id))
    named = refs.version_of(dps, details.model_id)
    name, _, selector = args.model_id.partition(":")
    history = refs.alias_history(dps, name, selector) if selector and selector != refs.LATEST else []
    if args.json:
        _print_json({**asdict(details), "name": named[0] if named else None, "number": named[1] if named else None,
                     "aliases": refs.aliases_of(dps, *named) if named else [], "alias_history": history})
        return _show_damage_exit(details)
    summary = [("id", details.model_id), ("type", details.store_type), ("base", details.base_id or "-"),
               ("created", f"{short_time(details.created)} UTC"), ("size", human_size(details.size))]
    if named:
        summary += [("version", refs.version_id(*named)), ("aliases", ", ".join(refs.aliases_of(dps, *named)))]
        checkpoint = refs.checkpoint_summary(refs.version_record(dps, *named))
        if checkpoint:
            summary += [("checkpoint step", str(checkpoint.get("step"))),
                        ("epoch", str(_or_dash(checkpoint.get("epoch")))),
                        ("training state", str(checkpoint.get("state")))]
    environment = [(key, ", ".join(value) if isinstance(value, list) else str(value or "-"))
                   for key, value in details.environment.items()]
    pruned = set(dps.all_ids_for_type(PRUNED))
    lineage = [(f"{'  ' * depth}{v.model_id}", v.store_type + (" (pruned)" if v.model_id in pruned else ""),
                short_time(v.created)) for depth, v in enumerate(details.lineage)]
    print(format_table(("MODEL", ""), summary))
    print()
    print(format_table(("ENVIRONMENT", ""), environment))
    print()
    print(format_table(("SIZE BREAKDOWN", ""), _size_lines(details.sizes), right=(1,)))
    print()
    print(format_table(("LINEAGE (model first, root last)", "TYPE", "CREATED (UTC)"), lineage))
    if history:
        print()
        print(format_table((f"ALIAS {name}:{selector} (oldest move first)", "FROM", "TO", "BY"),
                           [(short_time(datetime.fromtimestamp(move["time"], timezone.utc).isoformat()),
                             f"v{move['old']}" if move["old"] else "-", f"v{move['new']}" if move["new"] else "-",
                             f"{move['user']}@{move['host']}") for move in history]))
    if details.damage:
        print()
        print(format_table(("DAMAGE",), [(problem,) for problem in details.damage]))
    return _show_damage_exit(details)


def _show_damage_exit(details: maintenance.ModelDetails) -> int:
    """EXIT_OK, or (with one stderr line) EXIT_PROBLEMS when `show` found damage beyond the model's own document."""
    if not details.damage:
        return EXIT_OK
    return _fail(f"model {details.model_id} is readable, but {len(details.damage)} damaged item(s) are marked above: "
                 "run `mmlib verify` for what to do", EXIT_PROBLEMS)


def _tree_lines(node: maintenance.TreeNode, short: dict[str, str], prefix: str, connector: str,
                child_prefix: str) -> list[str]:
    v = node.version
    lines = [f"{prefix}{connector}{short[v.model_id]}  {v.store_type}  {short_time(v.created)}"]
    for index, child in enumerate(node.children):
        last = index == len(node.children) - 1
        lines += _tree_lines(child, short, prefix + child_prefix, "`-- " if last else "|-- ",
                             "    " if last else "|   ")
    return lines


def _tree_ids(node: maintenance.TreeNode) -> list[str]:
    return [node.version.model_id] + [model_id for child in node.children for model_id in _tree_ids(child)]


def _cmd_tree(args: argparse.Namespace) -> int:
    versions, damaged = maintenance.scan_versions(_open(args))
    roots = maintenance.tree_of(versions)
    if args.json:
        _print_json([root.as_dict() for root in roots]
                    + _damaged_entries([f.name for f in fields(maintenance.Version)] + ["children"], damaged))
    elif not roots and not damaged:
        print("no models in this store")
    else:
        short = maintenance.abbreviated([model_id for root in roots for model_id in _tree_ids(root)]
                                        + [entry.model_id for entry in damaged])
        for root in roots:
            print("\n".join(_tree_lines(root, short, "", "", "")))
        for entry in damaged:
            print(f"{short[entry.model_id]}  DAMAGED")
        if damaged:
            print("\n" + "\n".join(_damage_lines(damaged)))
    return _damaged_exit(len(damaged), len(versions) + len(damaged)) if damaged else EXIT_OK


def _cmd_recover(args: argparse.Namespace) -> int:
    store = _open(args)
    model_id = maintenance.resolve_model_id(store, args.model_id)
    if os.path.isdir(args.output) or not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise _UsageError(f"cannot write {args.output}: give a file path in an existing directory")
    count = maintenance.export_weights(store, model_id, args.output)
    print(f"wrote {count} tensors of model {model_id} to {args.output}")
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    store = _open(args)
    given = [maintenance.resolve_model_id(store, reference) for reference in args.model_ids]
    problems = maintenance.verify(store, given or None)
    model_ids = given or maintenance.kept_model_ids(store)
    advice = {problem.kind: maintenance.ADVICE[problem.kind] for problem in problems}
    if args.json:
        _print_json({"checked": model_ids, "problems": [asdict(problem) for problem in problems], "advice": advice})
    elif problems:
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem(s) in {len({p.model_id for p in problems})} of {len(model_ids)} model(s)")
        for kind, what_to_do in advice.items():
            print(f"{kind}: {what_to_do}")
    else:
        print(f"{len(model_ids)} model(s) verified: every blob matches its digest and every model recovers")
    return EXIT_PROBLEMS if problems else EXIT_OK


def _cmd_rm(args: argparse.Namespace) -> int:
    store = _open(args)
    removed = maintenance.remove_model(store, maintenance.resolve_model_id(store, args.model_id),
                                       with_descendants=args.with_descendants, force=args.force)
    if args.json:
        _print_json({"removed": removed})
        return EXIT_OK
    for model_id in removed:
        print(f"removed model {model_id}")
    print("run `mmlib gc` to reclaim the space of what no other model uses; it keeps what was written within its "
          "grace period (a day by default); `mmlib gc --grace 0` reclaims it now (safe while others save)")
    return EXIT_OK


def _cmd_gc(args: argparse.Namespace) -> int:
    report = maintenance.collect_garbage(_open(args), dry_run=args.dry_run, grace_seconds=args.grace)
    if args.json:
        _print_json(asdict(report))
        return EXIT_OK
    verb = "would remove" if report.dry_run else "removed"
    for document in report.documents:
        print(f"{verb} document {document['type']}/{document['id']}")
    for digest in report.blobs:
        print(f"{verb} blob {digest}")
    for upload_id in report.partial_uploads:
        print(f"{verb} unfinished upload {upload_id}")
    print(f"{verb} {len(report.documents)} document(s), {len(report.blobs)} blob(s), "
          f"{len(report.partial_uploads)} unfinished upload(s); kept {report.kept_young} unreferenced item(s) "
          f"younger than {args.grace:g} s (a save may still need them)")
    if report.kept_young and args.grace > 0:
        print(f"the {report.kept_young} item(s) kept for the grace period go in a later run, or now with "
              "`mmlib gc --grace 0` (it keeps what running saves wrote)")
    return EXIT_OK


def _cmd_diff(args: argparse.Namespace) -> int:
    from mmlib import model_diff  # with --values it recovers models, which imports torch

    store = _open(args)
    result = model_diff.diff(args.reference, args.other, store, values=args.values)
    if args.json:
        _print_json(result.to_dict())
        return EXIT_OK
    old, new = (_version_label(store, model_id) for model_id in (result.old_id, result.new_id))
    print(f"{old} -> {new}: " + ("identical" if result.identical else
                                 f"{len(result.changed)} changed, {len(result.added)} added, {len(result.removed)} "
                                 f"removed") + f", {result.unchanged} unchanged")
    if not result.changes:
        return EXIT_OK
    header: tuple[str, ...] = ("CHANGE", "TENSOR")
    rows: list[tuple[str, ...]] = [(change.change, change.key) for change in result.changes]
    if result.values:
        header += ("SHAPE", "DTYPE", "MAX ABS", "MEAN ABS", "MAX REL", "MEAN REL")
        rows = [(*row, change.shape_change, change.dtype_change,
                 *("-" if figure is None else f"{figure:.4g}"
                   for figure in (change.max_abs, change.mean_abs, change.max_rel, change.mean_rel)))
                for row, change in zip(rows, result.changes)]
    print()
    print(format_table(header, rows, right=(4, 5, 6, 7)))
    if not result.values:
        print("\n(from the stored weight hashes; --values recovers both models for shapes, dtypes and how far "
              "values moved)")
    return EXIT_OK


def _version_label(store: Store, model_id: str) -> str:
    """`NAME:vN (abbreviated id)`, or the abbreviated id of a model saved without a name."""
    named = refs.version_of(store.dict_pers_service, model_id)
    short = model_id[:maintenance.ABBREVIATED]
    return f"{refs.version_id(*named)} ({short})" if named else short


def _cmd_ui(args: argparse.Namespace) -> int:
    try:
        from mmlib.ui import server
    except ImportError as error:
        raise _UsageError(f"the web view needs the `ui` extra ({error}): pip install 'mmlib[ui]'") from error
    store = _open(args)
    if not server.is_loopback(args.host):
        print(f"mmlib: warning: the web view has no authentication: anyone who can reach {args.host} can read "
              "this store's metadata and recover its models through diffs; serve it on 127.0.0.1 (the default) "
              "unless this network is trusted", file=sys.stderr)
    location = server.shown_location(args.store or os.environ.get(STORE_ENV, ""))

    def announce(url: str) -> None:
        print(f"mmlib ui: serving {location} read-only at {url} (Ctrl+C stops it)", flush=True)

    try:
        server.serve(store, args.host, args.port, title=location, announce=announce)
    except OSError as error:
        raise _UsageError(str(error)) from error
    return EXIT_OK


def _source_checkout() -> Optional[str]:
    """The root of the mmlib source checkout that holds the benchmark: the one mmlib runs from (an editable
    install) or the current directory; None when neither has `benchmarks/run.py`."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(maintenance.__file__)))
    for root in (package_parent, os.getcwd()):
        if os.path.isfile(os.path.join(root, *BENCHMARK_MODULE.split(".")) + ".py"):
            return root
    return None


def _cmd_bench(args: argparse.Namespace) -> int:
    root = _source_checkout()
    if root is None:
        raise _UsageError(
            "the benchmark ships with mmlib's source, not with the installed package: get the source (a clone of "
            "mmlib's repository, or the unpacked sdist mmlib-<version>.tar.gz) and run in its root: bash setup.sh "
            "&& .venv/bin/mmlib bench --quick (results go to bench-results/ there; see the README, section "
            "Benchmark)")
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        benchmark = importlib.import_module(BENCHMARK_MODULE)
    except ImportError as error:
        raise _UsageError(f"the benchmark in {root} cannot be imported ({error}); run `bash setup.sh` in {root} "
                          "to install its dependencies") from error
    return int(benchmark.main(args.bench_args) or EXIT_OK)


def _common_options(suppress: bool) -> argparse.ArgumentParser:
    """--store, --blob-dir and -v; accepted before and after the subcommand (SUPPRESS keeps the earlier value)."""
    def default(value):
        return argparse.SUPPRESS if suppress else value

    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--store", metavar="DIR_OR_URI", default=default(None),
                        help=f"a store directory or a mongodb:// URI (default: ${STORE_ENV})")
    parent.add_argument("--blob-dir", metavar="DIR_OR_S3", default=default(None),
                        help=f"keep blobs in this directory or in object storage at s3://bucket/prefix instead "
                             f"of the store's own (default: ${BLOB_DIR_ENV})")
    parent.add_argument("-v", "--verbose", action="store_true", default=default(False),
                        help="log debug messages to stderr")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `mmlib` command."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="mmlib", parents=[_common_options(suppress=False)], formatter_class=formatter, epilog=_EPILOG,
        description="Inspect and maintain an mmlib model store.")
    parser.add_argument("--version", action="version", version=f"mmlib {__version__}",
                        help="print mmlib's version and exit")
    common = _common_options(suppress=True)
    json_option = argparse.ArgumentParser(add_help=False)
    json_option.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], summary: str, example: str,
                json_output: bool = True) -> argparse.ArgumentParser:
        parents = [common, json_option] if json_output else [common]
        sub = commands.add_parser(name, parents=parents, help=summary, description=summary,
                                  epilog=f"example:\n  {example}", formatter_class=formatter)
        sub.set_defaults(handler=handler)
        return sub

    ls = command("ls", _cmd_ls, "list the stored models, newest first", "mmlib --store ./models ls --name detector "
                 "--sort=-metrics.val_acc")
    ls.add_argument("--name", help="only the versions of this name")
    ls.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="only versions with this tag "
                    "(repeatable)")
    ls.add_argument("--sort", metavar="[-]metrics.KEY", help="order by a metric or tag; descending with a leading "
                    "- (write --sort=-metrics.KEY)")
    alias = command("alias", _cmd_alias, "point an alias of a version's name at it (NAME:ALIAS then names it)",
                    "mmlib --store ./models alias detector:v3 production", json_output=False)
    alias.add_argument("reference", metavar="REF", help=REFERENCE_HELP)
    alias.add_argument("alias", metavar="ALIAS", help="letters, digits, '.', '_', '-', starting with a letter")
    alias.add_argument("--delete", action="store_true", help="remove the alias of REF's name instead")
    tag = command("tag", _cmd_tag, "add tags to a named version", "mmlib --store ./models tag detector:v3 "
                  "data=coco reviewed=yes", json_output=False)
    tag.add_argument("reference", metavar="REF", help=REFERENCE_HELP)
    tag.add_argument("tags", nargs="+", metavar="KEY=VALUE")
    show = command("show", _cmd_show, "show a model: metadata, environment, size breakdown, lineage",
                   "mmlib --store ./models show MODEL_ID --json")
    show.add_argument("model_id", metavar="ID", help=REFERENCE_HELP)
    command("tree", _cmd_tree, "print the version graph as an indented tree", "mmlib --store ./models tree")
    recover = command("recover", _cmd_recover, "recover a model (with checks) and write its weights as safetensors",
                      "mmlib --store ./models recover MODEL_ID -o weights.safetensors", json_output=False)
    recover.add_argument("model_id", metavar="ID", help=REFERENCE_HELP)
    recover.add_argument("-o", "--output", required=True, metavar="FILE", help="the .safetensors file to write")
    verify = command("verify", _cmd_verify, "re-hash every blob the models need and recover each model; "
                     "exit code 1 on any problem", "mmlib --store ./models verify MODEL_ID")
    verify.add_argument("model_ids", nargs="*", metavar="ID",
                        help="models to verify: ids, unique prefixes, NAME, NAME:vN or NAME:ALIAS (default: all)")
    rm = command("rm", _cmd_rm, "remove a model (refused while other models derive from it); `gc` then reclaims "
                 "its space", "mmlib --store ./models rm MODEL_ID --with-descendants")
    rm.add_argument("model_id", metavar="ID", help=REFERENCE_HELP)
    rm.add_argument("--with-descendants", action="store_true",
                    help="also remove every model derived from it, directly or through others")
    rm.add_argument("--force", action="store_true", help="remove a version even while aliases point at it")
    gc = command("gc", _cmd_gc, "remove blobs, documents and unfinished uploads no model references and no "
                 "save wrote or reused within the grace period (safe while other processes save)",
                 "mmlib --store ./models gc --dry-run")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.add_argument("--grace", type=float, default=maintenance.DEFAULT_GC_GRACE_S, metavar="SECONDS",
                    help="keep what was written less than this long ago (default: %(default)g, a day; "
                         "0 reclaims at once what no model needs: it keeps what running saves wrote)")
    prune_command = command("prune", _cmd_prune, "drop the versions of a name that no retention rule keeps (kept "
                            "versions keep their ids and recover exactly)", "mmlib --store ./models prune run-17 "
                            "--keep-last 3 --keep-best 1 --monitor val_loss", json_output=False)
    prune_command.add_argument("name", metavar="NAME", help="the name whose versions to prune")
    prune_command.add_argument("--keep-last", type=int, metavar="N", help="keep the N newest versions (at least 1)")
    prune_command.add_argument("--keep-best", type=int, default=0, metavar="K",
                               help="keep the K best versions by --monitor")
    prune_command.add_argument("--monitor", metavar="METRIC", help="the metric --keep-best ranks by")
    prune_command.add_argument("--mode", choices=("min", "max"), default="min", help="whether lower (min, the "
                               "default) or higher (max) --monitor is better")
    prune_command.add_argument("--keep-every", type=int, metavar="STEPS",
                               help="keep the first checkpoint of every STEPS steps")
    prune_command.add_argument("--dry-run", action="store_true", help="only list what would be pruned")
    diff = command("diff", _cmd_diff, "list the tensors that differ between two models (changed, added, removed), "
                   "from their stored weight hashes; --values measures each change", "mmlib --store ./models diff "
                   "detector:v1 detector:v2 --values")
    diff.add_argument("reference", metavar="REF1", help=REFERENCE_HELP)
    diff.add_argument("other", metavar="REF2", help="the model to compare with REF1 (any reference)")
    diff.add_argument("--values", action="store_true", help="recover both models (with checks) and show each changed "
                      "tensor's shapes, dtypes and its max/mean absolute and relative change")
    ui = command("ui", _cmd_ui, "serve a read-only web view of the store (models, lineage graphs, versions, "
                 "diffs); needs the `ui` extra", "mmlib --store ./models ui --port 8000", json_output=False)
    ui.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: %(default)s, this "
                    "machine only); any other exposes the store to the network without authentication")
    ui.add_argument("--port", type=int, default=0, help="the port to listen on (default: 0, a free one; the URL is "
                    "printed)")
    command("bench", _cmd_bench, f"run the benchmark ({BENCHMARK_MODULE}) of the mmlib source checkout mmlib runs "
            "from, or of the current directory; other arguments go to the benchmark", "mmlib bench --quick",
            json_output=False)
    return parser


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Show a warning as one log line instead of Python's two-line format with source code."""
    logger.warning("%s", message)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the `mmlib` command with `argv` (default: sys.argv[1:]); returns the exit code."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "bench":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_request:
        return int(exit_request.code or 0)
    args.bench_args = extra
    package_logger = logging.getLogger("mmlib")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mmlib: %(levelname)s: %(message)s"))
    previous_level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    progress_logger = logging.getLogger(PROGRESS_LOGGER)
    previous_progress_level = progress_logger.level
    if _stderr_is_terminal() and not getattr(args, "json", False):
        progress_logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _log_warning
            code = args.handler(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_OK
    except (_UsageError, InvalidIdError, ModelNotFoundError) as error:
        return _fail(error, EXIT_USAGE)
    except StoreUnavailableError as error:
        return _fail(error, EXIT_UNAVAILABLE)
    except MMLibError as error:
        return _fail(error, EXIT_PROBLEMS)
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
        progress_logger.setLevel(previous_progress_level)


def _stderr_is_terminal() -> bool:
    """Whether a person watches stderr (progress is shown then, never into a pipe or a file)."""
    return sys.stderr.isatty()


def _discard_stdout() -> None:
    """The reader of our output went away (`mmlib ls | head -1`): send what is left to /dev/null, so the
    interpreter's final flush does not fail too."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _fail(error: Union[Exception, str], code: int) -> int:
    print(f"mmlib: error: {error}", file=sys.stderr)
    return code
