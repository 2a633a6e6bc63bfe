"""
The `klavi-async` command line.

Credentials come from `KLAVI_TOKEN`, or `KLAVI_ACCESS_KEY` + `KLAVI_SECRET_KEY`; the target
from `KLAVI_BASE_URL` or `KLAVI_ENVIRONMENT`.  Exit status: 0 all cancelled, 1 some
failed for good, 2 usage (bad flag, missing or rejected credentials, unreadable input),
3 some items not final yet (a rerun sends them), 130 interrupted.

click parses arguments (usage errors, help, choices) and tqdm draws the progress bar;
both are in the `cli` extra so the library itself stays on aiohttp, attrs and tenacity.
This package owns every command; the library below it (the row rules in `_rows`, the
signal handling in `_signals`, the process start in `_process`, and `klavi_async.nats`
through its public names) never imports it.  A command's module is imported when that
command runs: `klavi-async --help` imports click alone (`COMMANDS` has the help lines).

The modules: `_commands` (cancel, status), `_batchcmd` (cancel-batch), `_demo`,
`_emulator`, `_fleetcmds` (worker, enqueue, demo-fleet), `_streamcmds` (streams,
results); below them `_runner` (the batch runner), `_summary`, `_feed`, `_resume`,
`_input`, `_lines`, `_demofleet`, `_fleetprocs`, `_natsconnect`, `_common`, `_exits`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import TYPE_CHECKING, Final, NoReturn

if TYPE_CHECKING:
    import click

__all__ = ["main"]

COMMANDS: Final = {
    "cancel": ("_commands", "cancel", "Cancel one payment and print the result as JSON."),
    "status": ("_commands", "status", "Print a payment's status as JSON."),
    "cancel-batch": (
        "_batchcmd",
        "cancel_batch",
        "Cancel every payment in INPUT (CSV or JSON lines).",
    ),
    "emulator": ("_emulator", "emulator", "Serve the Klavi emulator (no credentials, no network)."),
    "demo": ("_demo", "demo", "Cancel a few hundred payments against the embedded emulator."),
    "worker": ("_fleetcmds", "worker", "Cancel the requests queued on NATS JetStream."),
    "enqueue": ("_fleetcmds", "enqueue_command", "Queue every cancel in INPUT on NATS."),
    "streams": ("_streamcmds", "streams", "Create the two streams, or change their settings."),
    "results": ("_streamcmds", "results", "Print the records and dead letters as JSON lines."),
    "demo-fleet": ("_fleetcmds", "demo_fleet", "Run a worker fleet on a local nats-server."),
}
"""Each command: its module, its function, and its help's first line (`--help` lists it)."""

NATS_COMMANDS: Final = frozenset({"worker", "enqueue", "streams", "results", "demo-fleet"})
"""The commands of the `nats` extra: without nats-py they print its install hint, exit 2."""


def _build() -> click.Group:
    import difflib

    import click

    from .. import __version__

    class Commands(click.Group):
        """
        Imports a command's module only when the command runs (or shows its own help).

        `klavi-async --help` lists the commands from `COMMANDS` alone, so it imports
        click and nothing else: not aiohttp, not nats-py, not tqdm.
        """

        def list_commands(self, ctx: click.Context) -> list[str]:
            return sorted(COMMANDS)

        def resolve_command(
            self, ctx: click.Context, args: list[str]
        ) -> tuple[str | None, click.Command | None, list[str]]:
            name = args[0] if args else ""
            if name in COMMANDS or name.startswith("-") or ctx.resilient_parsing:
                return super().resolve_command(ctx, args)
            # click suggests from the commands it has loaded: here, none yet.
            close = difflib.get_close_matches(name, COMMANDS)
            hint = f"\nDid you mean {close[0]!r}?" if close else ""
            raise click.UsageError(f"No such command {name!r}.{hint}", ctx)

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            found = COMMANDS.get(cmd_name)
            if found is None:
                return None
            module, name, _ = found
            if cmd_name in NATS_COMMANDS:
                try:  # its ImportError carries the install hint
                    importlib.import_module("klavi_async.nats")
                except ImportError as exc:
                    return _hint_only(cmd_name, str(exc))
            command: click.Command = getattr(importlib.import_module(f".{module}", __name__), name)
            return command

        def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
            rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    @click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="klavi-async")
    def cli() -> None:
        """Cancel Klavi payment initiations from the command line."""

    return cli


def _hint_only(name: str, hint: str) -> click.Command:
    import click

    def fail() -> None:
        raise click.UsageError(hint)

    extra = {"ignore_unknown_options": True, "allow_extra_args": True}
    return click.Command(name, callback=fail, help=hint, context_settings=extra)


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of `klavi-async`."""
    from ._exits import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

    # tqdm draws the batch's progress bar: missing, the batch would fail late.
    if any(importlib.util.find_spec(name) is None for name in ("click", "tqdm")):
        sys.stderr.write("klavi-async: the CLI needs its extra: pip install 'klavi-async[cli]'\n")
        sys.exit(EXIT_USAGE)  # pragma: no cover - exercised only without the extra installed

    import click

    cli = _build()
    try:
        cli.main(args=argv, prog_name="klavi-async", standalone_mode=False)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `klavi-async` (click >= 8.2)
            sys.stderr.write(exc.format_message() + "\n")  # the help: no "error:" before it
            sys.exit(EXIT_USAGE)
        sys.stderr.write(f"klavi-async: error: {exc.format_message()}\n")
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        sys.stderr.write(f"klavi-async: error: {exc.format_message()}\n")
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_OK)
