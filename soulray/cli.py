"""The `soulray` command: import, synth, regenerate, clean, serve-llm, inspect, export, gc.

User mistakes (SoulrayError, including one raised inside a Ray task) print one clear message and exit
with status 2 (the traceback too with --verbose; Ray Data's log file always has it); anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from soulray.config import CleanConfig, RegenerateConfig, load_config
from soulray.errors import Interrupted, SoulrayError
from soulray.fs import S3Config

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def add_config_arguments(parser: argparse.ArgumentParser, *, default: Path | None = DEMO_CONFIG) -> None:
    parser.add_argument("--config", default=str(default) if default else None,
                        help=f"job config (YAML); default: {default}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set storage.root=s3://bucket/prefix (repeatable)")


def regenerate_main(args: argparse.Namespace) -> int:
    from soulray.regenerate import run, summary

    config = load_config(RegenerateConfig, args.config, args.overrides)
    print(summary(run(config)))
    return 0


def batches_main(args: argparse.Namespace) -> int:
    from soulray.llm.batch import inspect_batches
    from soulray.llm.batch_journal import BatchJournal, summary
    from soulray.rewrite.prompts import load_template
    from soulray.store import VersionStore

    config = load_config(RegenerateConfig, args.config, args.overrides)
    if (args.refresh or args.cancel) and config.rewrite.base_url == "local":
        print("soulray: the embedded local server lives only as long as its run: nothing to ask", file=sys.stderr)
        return 2
    store = VersionStore(config.storage.root, config.dataset, s3=config.s3)
    journal = BatchJournal(store.cache_uri(), load_template(config.rewrite.prompt).version, s3=config.s3)
    lines = summary(inspect_batches(config=config.rewrite, journal=journal, refresh=args.refresh, cancel=args.cancel))
    print(f"{len(lines)} batches of {config.dataset} (prompt {config.rewrite.prompt})")
    for line in lines:
        print(f"  {line['entry']}  {line['batch_id'] or '-':<24} {line['key']:<10} {line['model']:<14} "
              f"{line['status'] or line['state']:<11} {line['requests']:>6} requests, {line['answered']} answered, "
              f"{line['failed']} failed, ${line['cost_usd']:.4f}")
    return 0


def add_clean_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True,
                        help="the corpus: Parquet (id, topic, messages) or JSON the importers read "
                             "(SoulChatCorpus list, SMILECHAT file or folder)")
    parser.add_argument("--output", required=True, help="store root (local folder or s3://bucket/prefix)")
    parser.add_argument("--format", choices=["auto", "parquet", "smilechat", "soulchatcorpus"], default=None,
                        help="input format (default: detected)")
    parser.add_argument("--dataset", default=None, help="dataset name under the root (default: cleaned)")
    add_config_arguments(parser, default=None)


def clean_config(args: argparse.Namespace) -> CleanConfig:
    flags = [f"input.path={args.input}", f"storage.root={args.output}"]
    flags += [f"input.format={args.format}"] if args.format else []
    flags += [f"dataset={args.dataset}"] if args.dataset else []
    return load_config(CleanConfig, args.config, flags + args.overrides)


def clean_main(args: argparse.Namespace) -> int:
    from soulray.clean import run
    from soulray.report import text

    result = run(clean_config(args))
    print(text(result.manifest, version_uri=result.version_uri))
    return 0


EVALUATE_DEMO_CONFIG = Path(__file__).parent / "configs" / "evaluate-demo.yaml"


def evaluate_main(args: argparse.Namespace) -> int:
    from soulray.config import EvaluateConfig
    from soulray.evaluation import run, summary

    print(summary(run(load_config(EvaluateConfig, args.config, args.overrides))))
    return 0


FINETUNE_DEMO_CONFIG = Path(__file__).parent / "configs" / "finetune-demo.yaml"


def finetune_main(args: argparse.Namespace) -> int:
    from soulray.config import FinetuneConfig
    from soulray.finetune import run, summary

    config = load_config(FinetuneConfig, args.config, args.overrides)
    print(summary(run(config)))
    return 0


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", nargs="?", default="latest",
                        help="'latest', a version id, or a version path (…/<dataset>/versions/<id>)")
    parser.add_argument("--root", default=None, help="store root (local folder or s3://bucket/prefix)")
    parser.add_argument("--dataset", default=None, help="dataset name under the root")
    parser.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL")


def _s3(args: argparse.Namespace) -> S3Config:
    return S3Config(endpoint_url=args.s3_endpoint)


def _open(args: argparse.Namespace):
    from soulray.store import open_version

    if (args.root is None) != (args.dataset is None):
        raise SoulrayError("give both --root and --dataset, or a version path")
    return open_version(args.version, root=args.root, dataset=args.dataset, s3=_s3(args))


def inspect_main(args: argparse.Namespace) -> int:
    from soulray.report import text

    version = _open(args)
    checked = version.verify() if args.verify else 0
    manifest = version.manifest
    if args.json:
        print(manifest.to_json().decode())
        return 0
    print(text(manifest))
    if args.verify:
        print(f"  checksums verified: all {checked} files the manifest lists (data, rejects, report)")
    return 0


def export_main(args: argparse.Namespace) -> int:
    from soulray.store.export import export_jsonl

    rows = export_jsonl(_open(args), args.output)
    print(f"wrote {rows} rows to {args.output}")
    return 0


def gc_main(args: argparse.Namespace) -> int:
    from soulray.store import VersionStore

    store = VersionStore(args.root, args.dataset, s3=_s3(args))
    candidates = store.gc(min_age_s=args.min_age_s, delete=args.delete)
    for candidate in candidates:
        print(f"{'deleted' if args.delete else 'orphan '} {candidate.key} ({candidate.size} bytes, {candidate.why})")
    print(f"{len(candidates)} orphaned files{'' if args.delete else ' (dry run: add --delete to remove)'}")
    return 0


def import_main(args: argparse.Namespace) -> int:
    from soulray.sources.importers import import_corpus

    table = import_corpus(args.format, args.source, args.output, qa=args.qa)
    print(f"wrote {table.num_rows} rows ({', '.join(table.column_names)}) to {args.output}")
    return 0


def synth_main(args: argparse.Namespace) -> int:
    from soulray.sources.synthetic import write_synthetic

    rows = write_synthetic(args.output, args.rows, seed=args.seed, near_duplicate_rate=args.near_duplicate_rate)
    print(f"wrote {rows} synthetic Q&A rows to {args.output}")
    return 0


def serve_llm_main(args: argparse.Namespace) -> int:
    from aiohttp import web

    from soulray.offline.server import Faults, LocalLLMServer, ServerConfig, SimulatedKey

    faults = Faults(error_5xx=args.fault_5xx, timeout=args.fault_timeout, malformed=args.fault_malformed,
                    truncated=args.fault_truncated, refusal=args.fault_refusal)
    counting = args.token_counting if args.token_counting in ("ours", "characters") else float(args.token_counting)
    server = LocalLLMServer(ServerConfig(default_limits=SimulatedKey(rpm=args.rpm, tpm=args.tpm),
                                         latency_ms=(args.latency_ms[0], args.latency_ms[1]), faults=faults,
                                         seed=args.seed, token_counting=counting, charge=args.charge,
                                         quantum_s=args.quantum_s))
    print(f"soulray offline rewriter (not a model) at http://{args.host}:{args.port}/v1 — "
          f"per-key limits {args.rpm} rpm / {args.tpm} tpm; stats at /stats", flush=True)
    web.run_app(server.app(), host=args.host, port=args.port, print=None, access_log=None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soulray", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    regenerate = commands.add_parser("regenerate", help="run the regenerate job (sources → published version)")
    add_config_arguments(regenerate)
    regenerate.set_defaults(func=regenerate_main)

    clean = commands.add_parser("clean", help="filter an existing multi-turn corpus and publish a version (no rewrite)")
    add_clean_arguments(clean)
    clean.set_defaults(func=clean_main)

    evaluate = commands.add_parser("evaluate", help="score models on a version's held-out dialogues (BLEU, ROUGE, judge)")
    add_config_arguments(evaluate, default=EVALUATE_DEMO_CONFIG)
    evaluate.set_defaults(func=evaluate_main)

    finetune = commands.add_parser("finetune", help="fine-tune a model on a published version with Ray Train")
    add_config_arguments(finetune, default=FINETUNE_DEMO_CONFIG)
    finetune.set_defaults(func=finetune_main)

    importer = commands.add_parser("import", help="convert PsyQA / SMILECHAT / SoulChatCorpus JSON to Parquet")
    importer.add_argument("format", choices=["psyqa", "smilechat", "soulchatcorpus"])
    importer.add_argument("source", help="JSON file (PsyQA, SoulChatCorpus) or folder of JSON files (SMILECHAT)")
    importer.add_argument("output", help="Parquet file to write")
    importer.add_argument("--qa", action="store_true",
                          help="dialogue formats: extract each dialogue's first exchange as a Q&A table")
    importer.set_defaults(func=import_main)

    synth = commands.add_parser("synth", help="write deterministic synthetic PsyQA-shaped Q&A for scale tests")
    synth.add_argument("output", help="Parquet file to write")
    synth.add_argument("--rows", type=int, default=10_000, help="answers to generate")
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    synth.add_argument("--near-duplicate-rate", type=float, default=0.1, help="share of near-duplicate answers")
    synth.set_defaults(func=synth_main)

    inspect = commands.add_parser("inspect", help="print a published version's summary")
    _store_arguments(inspect)
    inspect.add_argument("--verify", action="store_true",
                         help="check the size and SHA-256 of every file the manifest lists")
    inspect.add_argument("--json", action="store_true", help="print the whole manifest")
    inspect.set_defaults(func=inspect_main)

    export = commands.add_parser("export", help="write a version as SoulChatCorpus-style JSONL (messages)")
    _store_arguments(export)
    export.add_argument("--output", required=True, help="JSONL file to write")
    export.set_defaults(func=export_main)

    serve = commands.add_parser("serve-llm", help="run the offline OpenAI-compatible rewriter (demos, dry runs, tests)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--rpm", type=int, default=10_000, help="requests per minute allowed per API key")
    serve.add_argument("--tpm", type=int, default=10_000_000, help="tokens per minute allowed per API key")
    serve.add_argument("--latency-ms", type=float, nargs=2, default=(0.0, 0.0), metavar=("MIN", "MAX"),
                       help="uniform latency range per request")
    serve.add_argument("--seed", type=int, default=0, help="seed for latency and fault draws")
    serve.add_argument("--token-counting", default="ours", metavar="ours|characters|RATIO",
                       help="count tokens as soulray estimates them, one a character, or RATIO times soulray's")
    serve.add_argument("--charge", choices=("actual", "max_tokens"), default="actual",
                       help="admission charge: actual tokens, or max(max_tokens, prompt) as OpenAI does")
    serve.add_argument("--quantum-s", type=float, default=60.0,
                       help="enforce the per-minute limits in slices this long (OpenAI: 60,000 RPM as 1,000 a second)")
    for fault, text in (("5xx", "503 errors"), ("timeout", "requests that hang 30 s"),
                        ("malformed", "completions without role labels"), ("truncated", "finish_reason=length"),
                        ("refusal", "refusals")):
        serve.add_argument(f"--fault-{fault}", type=float, default=0.0, help=f"share of requests answered with {text}")
    serve.set_defaults(func=serve_llm_main)

    batches = commands.add_parser("batches", help="list a dataset's Batch API batches (rewrite.mode batch); cancel them")
    add_config_arguments(batches)
    batches.add_argument("--refresh", action="store_true", help="ask the provider for the live batches' status")
    batches.add_argument("--cancel", action="store_true", help="cancel every batch still running")
    batches.set_defaults(func=batches_main)

    gc = commands.add_parser("gc", help="list (or --delete) shards no committed manifest names")
    gc.add_argument("--root", required=True, help="store root")
    gc.add_argument("--dataset", required=True, help="dataset name")
    gc.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL")
    gc.add_argument("--min-age-s", type=float, default=3600.0,
                    help="leave files younger than this alone (a run may still be writing them)")
    gc.add_argument("--delete", action="store_true", help="delete what is listed")
    gc.set_defaults(func=gc_main)
    return parser


def run_cli(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    from soulray.runtime import install_stop_handlers

    verbose = getattr(args, "verbose", False)
    restore_signal_handlers = install_stop_handlers()
    try:
        return func(args)
    except KeyboardInterrupt as exc:  # SIGTERM or Ctrl-C (soulray.runtime): one line, the shell's exit status
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        notes = "; ".join(exc.notes) if isinstance(exc, Interrupted) else ""
        print(f"soulray: stopped by {signal.Signals(signum).name}: {notes + '. ' if notes else ''}Nothing was "
              "published; run the same command again to resume (answers in the cache are not paid again)",
              file=sys.stderr, flush=True)
        return 128 + signum
    except Exception as exc:  # noqa: BLE001 - user errors may arrive wrapped by Ray
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        if verbose:
            traceback.print_exception(exc, file=sys.stderr)
        print(f"soulray: error: {_RAY_RETRY_NOTE.sub('', str(user_error))}", file=sys.stderr)
        return 2
    finally:
        restore_signal_handlers()


# Ray Data appends this note (2-3 lines) to the message of an exception raised in a task
_RAY_RETRY_NOTE = re.compile(r"\nFailed to [^\n]* after \d+/\d+ attempts \(total backoff .*", re.S)


def find_user_error(exc: BaseException) -> SoulrayError | None:
    """The SoulrayError behind `exc`, looking through Ray's task-error wrappers. A RayTaskError is
    unwrapped to its `cause` first: Ray makes it an instance of the cause's class too, but its text is
    the whole remote traceback."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException) and cause is not current:
            current = cause
            continue
        if isinstance(current, SoulrayError):
            return current
        current = current.__cause__ or current.__context__
    # An actor that died in __init__ (ActorDiedError) keeps its cause only as text: recover it from there.
    found = _USER_ERROR_TEXT.findall(str(exc))
    return SoulrayError(found[-1].strip()) if found else None


_USER_ERROR_TEXT = re.compile(r"soulray\.errors\.\w+: (.+)")


def configure_logging(verbose: bool) -> None:
    from soulray.redaction import install_log_redaction

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    if not verbose:  # botocore says where it found credentials on every S3 command: noise, not news
        logging.getLogger("botocore").setLevel(logging.WARNING)
        _quiet_ray_data_console()


class _NoErrorsOnConsole(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def _quiet_ray_data_console() -> None:
    """Ray Data logs a failed task's whole traceback, two or three times, to the console and to its log
    file (ray-data.log in the Ray session's logs): keep the file's copy; the console gets our one line
    (the CLI prints it, or, for a bug, Python prints the traceback anyway)."""
    import ray.data  # noqa: F401 - importing it sets up its loggers

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.addFilter(_NoErrorsOnConsole())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    return run_cli(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
