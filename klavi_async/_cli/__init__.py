"""
The `klavi-async` command line.

Credentials come from `KLAVI_TOKEN`, or `KLAVI_ACCESS_KEY` + `KLAVI_SECRET_KEY`; the target
from `KLAVI_BASE_URL` or `KLAVI_ENVIRONMENT`.  Exit status: 0 all cancelled, 1 some
failed for good, 2 usage (bad flag, missing or rejected credentials, unreadable input),
3 some items not final yet (a rerun sends them), 130 interrupted.

click parses arguments (usage errors, help, choices) and tqdm draws the progress bar;
both are in the `cli` extra so the library itself stays on aiohttp, attrs and tenacity.
The commands' modules need them and are imported by `main()` only: the input rows, the
results file and the signal handling below them are shared with `klavi_async.nats`,
which may run without the extra.

The modules, each importing only those after it: `_commands` (cancel, status),
`_batchcmd` (cancel-batch), `_demo`, `_emulator`, `_runner` (the batch runner),
`_summary`, `_feed`, `_resume`, `_rows`, `_signals`, `_common`, `_process`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    import click

__all__ = ["main"]


def _build() -> click.Group:
    import click

    from ._batchcmd import cancel_batch
    from ._commands import cancel, status
    from ._common import fail_usage
    from ._demo import demo
    from ._emulator import emulator

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(package_name="klavi-async", prog_name="klavi-async")
    def cli() -> None:
        """Cancel Klavi payment initiations from the command line."""

    for command in (cancel, status, cancel_batch, emulator, demo):
        cli.add_command(command)

    try:  # the JetStream commands come with the `nats` extra (klavi_async/nats/_cli.py)
        from ..nats._cli import add_commands
    except ImportError as exc:  # without nats-py they only print the install hint, exit 2
        hint = str(exc)
        for name in ("worker", "enqueue", "streams", "results", "demo-fleet"):
            extra = {"ignore_unknown_options": True, "allow_extra_args": True}
            cli.command(name, help=hint, context_settings=extra)(lambda: fail_usage(hint))
    else:
        add_commands(cli)

    return cli


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of `klavi-async`."""
    try:
        import click
        import tqdm  # noqa: F401 - the progress bar: missing, the batch would fail late
    except ImportError:  # pragma: no cover - exercised only without the extra installed
        sys.stderr.write("klavi-async: the CLI needs its extra: pip install 'klavi-async[cli]'\n")
        sys.exit(2)  # EXIT_USAGE: its module needs click

    from ._common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

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
