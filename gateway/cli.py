"""The `dualflow` command: serve, demo, clear, bench."""

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
