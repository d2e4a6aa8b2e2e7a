"""The `dualflow` command: serve, demo, clear, reconcile, bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence


def _serve(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .server import ServerConfig, serve

    tls = (args.tls_cert, args.tls_key, args.tls_client_ca)
    if any(tls) and not all(tls):
        print("dualflow: --tls-cert, --tls-key and --tls-client-ca go together", file=sys.stderr)
        return 2
    config = ServerConfig(listen=args.listen, db=args.db, metrics_port=args.metrics_port,
                          metrics_host=args.metrics_host, grace_s=args.grace, config_path=args.config,
                          channel=args.channel, tls_cert=args.tls_cert, tls_key=args.tls_key,
                          tls_client_ca=args.tls_client_ca, callback_host=args.callback_host,
                          callback_port=args.callback_port)
    try:
        asyncio.run(serve(config))
    except ConfigError as exc:
        print(f"dualflow: bad config {args.config}: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main

    return main()


def _clear(args: argparse.Namespace) -> int:
    """Close the open window (or show one) over the Clearing service and print its figures."""
    import os

    import grpc
    from rich.console import Console
    from rich.table import Table

    from dualflow.core.money import format_minor
    from dualflow.v1 import clearing_pb2 as pb
    from dualflow.v1 import clearing_pb2_grpc

    async def call() -> pb.Window:
        key = args.api_key or os.environ.get("DUALFLOW_API_KEY", "")
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        async with grpc.aio.insecure_channel(args.target) as channel:
            stub = clearing_pb2_grpc.ClearingStub(channel)
            if args.window == "current" and not args.no_close:
                return await stub.CloseWindow(pb.CloseWindowRequest(), metadata=metadata, timeout=30)
            return await stub.GetWindow(pb.GetWindowRequest(window_id=args.window), metadata=metadata, timeout=30)

    try:
        w = asyncio.run(call())
    except grpc.aio.AioRpcError as exc:
        print(f"dualflow clear: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    out = Console()
    out.print(f"window [bold]{w.window_id}[/bold] {pb.WindowState.Name(w.state).removeprefix('WINDOW_')}: "
              f"{w.obligation_count} obligations, {w.queued_count} queued or handed on")
    positions = Table("pool", "currency", "owes", "owed", "net", "queued", title="positions")
    for p in w.positions:
        positions.add_row(p.pool, p.currency, *(format_minor(v, p.currency, with_code=False) for v in (
            p.owes_minor, p.owed_minor, p.net_minor, p.queued_minor)))
    netting = Table("currency", "gross", "net", "efficiency", "transfers", "N-1", "optimal", title="netting")
    for n in w.netting:
        netting.add_row(n.currency, format_minor(n.gross_minor, n.currency, with_code=False),
                        format_minor(n.net_minor, n.currency, with_code=False), f"{n.efficiency:.2%}",
                        str(n.transfer_count), str(n.transfer_bound), "yes" if n.optimal else "no")
    transfers = Table("instruction", "payer", "payee", "amount", "state", "reason", title="settlement transfers")
    for i in w.instructions:
        transfers.add_row(i.instruction_id, i.payer_pool, i.payee_pool, format_minor(i.amount_minor, i.currency),
                          pb.InstructionState.Name(i.state).removeprefix("INSTRUCTION_"), i.reason)
    for table in (positions, netting, transfers):
        if table.row_count:
            out.print(table)
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    """Reconcile one channel and business day over the Reconciliation service; print the counts by
    class, the fees, and the discrepancies of that day still waiting for a person; write the report
    (reconciliation/report.py: a CSV of every result, an HTML summary) from the service's pages."""
    import os
    import time
    from pathlib import Path

    import grpc
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from dualflow.reconciliation import report
    from dualflow.v1 import reconciliation_pb2 as pb
    from dualflow.v1 import reconciliation_pb2_grpc

    directory = Path(args.report) if args.report else None
    written: list[Path] = []

    async def call() -> tuple[pb.ReconciliationRun, list[pb.ReconciliationDiscrepancy]]:
        key = args.api_key or os.environ.get("DUALFLOW_API_KEY", "")
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        async with grpc.aio.insecure_channel(args.target) as channel:
            stub = reconciliation_pb2_grpc.ReconciliationStub(channel)
            with progress:
                # The run is one call (the server streams the statement and classifies it): its phase
                # shows as a spinner; the report's pages as a bar against the run's result count.
                running = progress.add_task(f"reconciling {args.channel} {args.date}", total=None)
                run = await stub.RunReconciliation(pb.RunReconciliationRequest(
                    channel=args.channel, business_date=args.date, force=args.force), metadata=metadata,
                    timeout=600)
                progress.update(running, total=1, completed=1)
                found: list[pb.ReconciliationDiscrepancy] = []
                token = ""
                while True:
                    page = await stub.ListDiscrepancies(pb.ListDiscrepanciesRequest(
                        channel=args.channel, page_size=1000, page_token=token), metadata=metadata, timeout=60)
                    found += [d for d in page.discrepancies if d.business_date == args.date]
                    token = page.next_page_token
                    if not token:
                        break
                if directory is None:
                    return run, found
                directory.mkdir(parents=True, exist_ok=True)
                csv_path, html_path = report.paths(directory, args.channel, args.date)
                fetching = progress.add_task("fetching the report's results", total=run.results)
                tmp = csv_path.with_name(csv_path.name + ".tmp")
                with tmp.open("w", encoding="utf-8", newline="") as out:
                    writer = report.CsvWriter(out, pb)
                    token = ""
                    while True:
                        page = await stub.ListRunResults(pb.ListRunResultsRequest(
                            run_id=run.run_id, page_size=5000, page_token=token), metadata=metadata, timeout=60)
                        writer.write(page.results)
                        progress.update(fetching, total=page.total, advance=len(page.results))
                        token = page.next_page_token
                        if not token:
                            break
                tmp.replace(csv_path)
                report.write_html(html_path, report.html_summary(pb, run, found, csv_path.name, writer.rows))
                written.extend((csv_path, html_path))
                return run, found

    try:
        run, found = asyncio.run(call())
    except grpc.aio.AioRpcError as exc:
        print(f"dualflow reconcile: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    out = Console()
    state = pb.RunState.Name(run.state).removeprefix("RUN_STATE_")
    replayed = " (an earlier run: --force runs it again)" if run.replayed else ""
    moved = f", {run.auto_refused} had moved meanwhile" if run.auto_refused else ""
    out.print(f"run [bold]{run.run_id}[/bold] {state}{replayed}: {run.lines} statement lines, {run.instructions} of "
              f"our instructions; {run.auto_resolved} payments resolved by it{moved}")
    if run.state == pb.RUN_STATE_REJECTED:
        out.print(f"[red]the statement was rejected[/red]: {run.error_reason} at line {run.error_line}; nothing "
                  "of it was applied")
    elif run.state != pb.RUN_STATE_COMPLETED:
        out.print(f"[red]{run.detail}[/red]")
    counts = Table("class", "lines", "instructions", "amount", title="counts by class")
    for c in run.counts:
        amounts = ", ".join(f"{report.amount(v, k)} {k}" for k, v in sorted(c.amount_minor.items()))
        counts.add_row(pb.ReconciliationClass.Name(c.match_class).removeprefix("RECONCILIATION_CLASS_"),
                       str(c.lines), str(c.instructions), amounts)
    fees = Table("currency", "lines with a fee", "fees", "posted now", title="the channel's fees")
    for f in run.fees:
        fees.add_row(f.currency, str(f.lines), report.amount(f.fee_minor, f.currency),
                     str(f.posted_now))
    now = time.time_ns()
    waiting = Table("discrepancy", "class", "instruction", "status", "age", "detail",
                    title=f"discrepancies of {args.channel} on {args.date} waiting for a person")
    for d in found:
        waiting.add_row(d.discrepancy_id, pb.ReconciliationClass.Name(d.match_class).removeprefix(
            "RECONCILIATION_CLASS_"), d.instruction_id, pb.DiscrepancyStatus.Name(d.status).removeprefix(
            "DISCREPANCY_STATUS_").lower() + (f" ({d.assignee})" if d.assignee else ""),
            f"{(now - d.opened_at_ns) / 3.6e12:.1f} h", d.detail)
    for table in (counts, fees, waiting):
        if table.row_count:
            out.print(table)
    if not found and run.state == pb.RUN_STATE_COMPLETED:
        out.print("no discrepancy of that day is waiting for a person")
    for path in written:
        out.print(f"report: {path}")
    return 0 if run.state == pb.RUN_STATE_COMPLETED else 1


MOCK_BANKS = ("iso8583", "psp", "transfer")


def _mock_bank(args: argparse.Namespace) -> int:
    import importlib

    # Each mock is its own program with its own options; it imports nothing of the
    # platform's codecs, so it can catch their bugs.
    module = importlib.import_module(f"dualflow.mock_banks.{args.kind}.server")
    return int(module.main(args.mock_args) or 0)


def _bench(args: argparse.Namespace) -> int:
    runner = args.bench_run
    return int(runner(args) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualflow", description="dualflow payment core")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server (all services in one process)")
    serve.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT to bind; port 0 picks a free one")
    serve.add_argument("--db", default="dualflow.db", help="a SQLite path or a postgresql:// DSN")
    serve.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    serve.add_argument("--metrics-host", default="127.0.0.1")
    serve.add_argument("--grace", type=float, default=10.0, help="seconds to drain in-flight calls on shutdown")
    serve.add_argument("--config", default=None,
                       help="TOML file: merchants, callers (API keys, permissions, rate limits), card vault keys "
                            "(see examples/dualflow.example.toml); without it authentication is off")
    serve.add_argument("--tls-cert", help="serve TLS with this certificate (PEM); needs --tls-key and --tls-client-ca")
    serve.add_argument("--tls-key", help="the certificate's private key (PEM)")
    serve.add_argument("--tls-client-ca", help="CA (PEM) that client certificates must chain to (mTLS: required)")
    serve.add_argument("--callback-host", default="127.0.0.1", help="where channels' callbacks are received")
    serve.add_argument("--callback-port", type=int, default=0,
                       help="port of the callback listener (with [[channels]] configured); 0 picks a free one")
    serve.add_argument("--channel", choices=("none", "scripted"), default="none",
                       help="how external payments reach the fund flow: none (refused) or scripted (answered "
                            "in-process, for development)")
    serve.set_defaults(run=_serve)

    demo = sub.add_parser("demo", help="a short day of the platform on a temporary SQLite database")
    demo.set_defaults(run=_demo)

    clear = sub.add_parser("clear", help="cut-off: close the open clearing window and show its netting (or show "
                                         "any window) over the Clearing service")
    clear.add_argument("--window", required=True, help="'current' closes the open window; a window id shows it")
    clear.add_argument("--no-close", action="store_true", help="with --window current: show it, do not close it")
    clear.add_argument("--target", default="127.0.0.1:50051", help="the server's HOST:PORT")
    clear.add_argument("--api-key", default=None, help="a key with clearing.manage (closing) or clearing.read "
                                                       "(default: $DUALFLOW_API_KEY)")
    clear.set_defaults(run=_clear)

    reconcile = sub.add_parser("reconcile", help="reconcile a channel's statement of a business day against our "
                                                 "payments over the Reconciliation service, and show what it found")
    reconcile.add_argument("--channel", required=True, help="a configured channel's name")
    reconcile.add_argument("--date", required=True, help="the business day, YYYY-MM-DD (UTC)")
    reconcile.add_argument("--force", action="store_true", help="run it again even if the day has a completed run")
    reconcile.add_argument("--target", default="127.0.0.1:50051", help="the server's HOST:PORT")
    reconcile.add_argument("--api-key", default=None, help="a key with reconciliation.manage "
                                                           "(default: $DUALFLOW_API_KEY)")
    reconcile.add_argument("--report", default="reconciliation-reports", metavar="DIR",
                           help="write recon-<channel>-<date>.csv (every result) and .html (the summary) here "
                                "(default: ./reconciliation-reports; '' writes none)")
    reconcile.set_defaults(run=_reconcile)

    mock = sub.add_parser("mock-bank", help="run a mock bank or PSP server (loopback; see mock_banks/launcher.py)",
                          add_help=False)
    mock.add_argument("kind", choices=MOCK_BANKS)
    mock.add_argument("mock_args", nargs=argparse.REMAINDER, help="the mock's own options (--help for them)")
    mock.set_defaults(run=_mock_bank)

    bench = sub.add_parser("bench", help="benchmarks with baselines measured in the same run")
    areas = bench.add_subparsers(dest="area", required=True)
    from dualflow.bench import channels as channels_bench
    from dualflow.bench import clearing as clearing_bench
    from dualflow.bench import ledger as ledger_bench
    from dualflow.bench import payments as payments_bench
    from dualflow.bench import reconcile as reconcile_bench
    from dualflow.bench import routing as routing_bench

    ledger_bench.add_parser(areas)
    payments_bench.add_parser(areas)
    channels_bench.add_parser(areas)
    reconcile_bench.add_parser(areas)
    routing_bench.add_parser(areas)
    clearing_bench.add_parser(areas)
    bench.set_defaults(run=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
