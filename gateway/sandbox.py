"""A sandbox of mock banks on loopback, and the platform configuration that reaches them.

The demo, the end-to-end tests and `dualflow bench channels` need the same
thing: each mock bank running as its own process with fresh keys, and
`[[channels]]` entries for the platform's TOML that point the adapters at them,
with key files (never key material) and callbacks aimed at the platform's
callback listener. The listener's port is chosen here, before the platform
starts, because the channels must know where to call back.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dualflow.mock_banks.launcher import MockBankProcess

KINDS = ("iso8583", "psp", "transfer")
# One name per channel kind; the names are the channels' metric labels and callback paths.
NAMES = {"iso8583": "cardbank", "psp": "wallet-psp", "transfer": "bank-rail"}


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the platform binds it a moment later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _toml_value(value: object) -> str:
    return json.dumps(value)  # strings, numbers, lists and inline tables of those are valid TOML as JSON


def _inline(table: dict[str, object]) -> str:
    return "{ " + ", ".join(f"{k} = {_toml_value(v) if not isinstance(v, dict) else _inline(v)}"
                            for k, v in table.items()) + " }"


@dataclass
class Sandbox:
    folder: Path
    seed: int = 7
    callback_port: int = field(default_factory=free_port)
    banks: dict[str, MockBankProcess] = field(default_factory=dict)
    _channels: list[str] = field(default_factory=list)
    # Banks that back no channel of `channels_toml` (the demo's interbank rail for its pools).
    others: dict[str, MockBankProcess] = field(default_factory=dict)

    @property
    def callback_base(self) -> str:
        return f"http://127.0.0.1:{self.callback_port}/callbacks"

    def start(self, kinds: tuple[str, ...] = KINDS, fee_bps: dict[str, int] | None = None,
              psp_bin_ranges: Sequence[tuple[str, str]] = ()) -> Sandbox:
        """Start the banks of `kinds`. `psp_bin_ranges`: the only cards the PSP channel may take,
        as inclusive BIN prefix ranges (its `bin_ranges` setting); empty: any card."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fees = fee_bps or {"iso8583": 55, "psp": 60, "transfer": 10}
        try:
            for kind in kinds:
                extra = {"bin_ranges": psp_bin_ranges} if kind == "psp" else {}
                getattr(self, f"_start_{kind}")(NAMES[kind], fees.get(kind, 0), **extra)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for bank in (*self.banks.values(), *self.others.values()):
            bank.stop()

    def start_other_rail(self, name: str) -> tuple[MockBankProcess, Path]:
        """One more mock transfer rail, its own process with its own key: the bank and its key file
        (its channels are the caller's to configure)."""
        key = self.folder / f"{name}-hmac.hex"
        key.write_text(secrets.token_hex(32))
        bank = MockBankProcess("transfer", "--hmac-key-file", str(key), "--seed", str(self.seed),
                               log_dir=self.folder).start()
        self.others[name] = bank
        return bank, key

    def channels_toml(self) -> str:
        return "\n".join(self._channels)

    def _channel(self, name: str, kind: str, settings: dict[str, object], keys: dict[str, Path]) -> None:
        lines = [f'[[channels]]\nname = "{name}"\nkind = "{kind}"', "[channels.settings]"]
        lines += [f"{k} = {_inline(v) if isinstance(v, dict) else _toml_value(v)}" for k, v in settings.items()]
        lines.append("[channels.keys]")
        lines += [f'{k} = {_toml_value(str(v))}' for k, v in keys.items()]
        self._channels.append("\n".join(lines) + "\n")

    def _start_iso8583(self, name: str, fee_bps: int) -> None:
        key = self.folder / "iso8583-mac.hex"
        key.write_text(secrets.token_hex(16))
        bank = MockBankProcess("iso8583", "--mac-key-file", str(key), "--seed", str(self.seed),
                               log_dir=self.folder).start()
        self.banks[name] = bank
        self._channel(name, "iso8583", {
            "host": "127.0.0.1", "port": bank.port, "terminal_id": "DF000001", "merchant_id": "DUALFLOW0000001",
            "currencies": ["CNY"], "fee_bps": fee_bps, "statement_url": bank.admin_url,
            "reply_timeout_s": 2, "echo_interval_s": 5, "connect_wait_s": 0.5,
        }, {"mac_key": key})

    def _start_psp(self, name: str, fee_bps: int, bin_ranges: Sequence[tuple[str, str]] = ()) -> None:
        keys = self.folder / "psp-keys"
        bank = MockBankProcess("psp", "--keys-dir", str(keys), "--init-keys", "--seed", str(self.seed),
                               log_dir=self.folder).start()
        self.banks[name] = bank
        merchant = json.loads((keys / "merchant.json").read_text())
        self._channel(name, "psp", {
            "base_url": f"http://127.0.0.1:{bank.port}", "mch_id": merchant["mch_id"],
            "serial_no": merchant["serial_no"], "currencies": ["CNY"], "assets": ["BANK_CARD"],
            "fee": {"fixed": 0, "bps": fee_bps}, "notify_url": f"{self.callback_base}/{name}", "timeout_ms": 2000,
            **({"bin_ranges": [list(r) for r in bin_ranges]} if bin_ranges else {}),
        }, {"merchant_private_key": keys / "merchant_private_key.pem",
            "platform_certificates": keys / "platform_certificates.pem", "api_v3_key": keys / "api_v3_key"})

    def _start_transfer(self, name: str, fee_bps: int) -> None:
        key = self.folder / "rail-hmac.hex"
        key.write_text(secrets.token_hex(32))
        bank = MockBankProcess("transfer", "--hmac-key-file", str(key), "--seed", str(self.seed),
                               "--callback-url", f"{self.callback_base}/{name}", log_dir=self.folder).start()
        self.banks[name] = bank
        self._channel(name, "transfer", {
            "base_url": f"http://127.0.0.1:{bank.port}",
            "pool_account": {"bank_code": "DFPOOL", "number": "6222000000000001", "name": "dualflow reserve"},
            "currencies": ["CNY"], "fees": {"CNY": {"fixed": 0, "bps": fee_bps}},
            "callback_url": f"{self.callback_base}/{name}", "timeout_ms": 2000,
        }, {"hmac_key": key})
