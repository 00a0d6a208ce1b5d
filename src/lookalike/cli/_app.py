"""The Typer app, its consoles, and the one error path every command shares."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from functools import wraps
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from ..errors import (
    EXIT_INTERRUPTED,
    EXIT_NO_INPUT,
    EXIT_USAGE,
    ImageError,
    LookalikeError,
    NothingToProcessError,
)
from ..fileio import printable
from ..plugins import load_plugins

try:  # typer 0.2x vendors its own click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer on click itself
    from click.exceptions import ClickException, NoArgsIsHelpError

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)


def shown(text: object) -> str:
    """A path or message as the console should show it: no rich markup, odd bytes as \\xNN."""
    return escape(printable(str(text)))


class _OneLineErrors(TyperGroup):
    """Every usage error (unknown option, bad value, out of range) as one ``error:`` line naming
    the option, with the exit code that usage errors have everywhere, instead of a boxed panel."""

    def main(self, args: Any = None, prog_name: str | None = None, *pos: Any, **kwargs: Any) -> Any:
        standalone = kwargs.pop("standalone_mode", True)
        try:
            load_plugins()  # components registered from outside the package, before any name is checked
            code = super().main(args, prog_name, *pos, standalone_mode=False, **kwargs)
        except LookalikeError as exc:
            err.print(f"[red]error:[/red] {shown(exc)}")
            code = EXIT_USAGE
        except NoArgsIsHelpError as exc:
            out.print(exc.ctx.get_help() if exc.ctx else exc.format_message(), markup=False)
            code = EXIT_USAGE
        except ClickException as exc:
            if not standalone:
                raise
            where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
            err.print(f"[red]error:[/red] {escape(exc.format_message())}{escape(where)}")
            code = exc.exit_code
        except typer.Abort:
            if not standalone:
                raise
            err.print("[red]error:[/red] interrupted")
            code = EXIT_INTERRUPTED
        if not standalone:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="Find, for every query image, the gallery images that show the same thing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
index_app = typer.Typer(help="Saved gallery indexes: build, add, remove, info.", no_args_is_help=True)
app.add_typer(index_app, name="index")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the moment (test runners and notebooks swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _setup_logging() -> None:
    logger = logging.getLogger("lookalike")
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def friendly(func: Any) -> Any:
    """Turn LookalikeErrors into one line on stderr and the exit code of their kind."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        before = _stop_on_sigterm()
        try:
            return func(*args, **kwargs)
        except (NothingToProcessError, ImageError) as exc:
            err.print(f"[red]error:[/red] {shown(exc)}")
            raise typer.Exit(EXIT_NO_INPUT) from None
        except LookalikeError as exc:
            err.print(f"[red]error:[/red] {shown(exc)}")
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            err.print("[red]error:[/red] interrupted; `--resume` continues an index build where it stopped")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OSError as exc:  # the file system said no (permissions, a full disk, a read-only place)
            where = exc.filename if exc.filename is not None else "a file"
            err.print(f"[red]error:[/red] {shown(where)}: cannot write or read it ({shown(exc.strerror or exc)})")
            raise typer.Exit(EXIT_USAGE) from None
        finally:
            if before is not None:
                signal.signal(signal.SIGTERM, before)

    return wrapper


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm() -> Any:
    """Make SIGTERM (``kill``, ``timeout``, a stopped container) unwind like Ctrl-C, so temporary
    folders and partial writes are cleaned up on the way out; returns the handler it replaced (None
    when it left things alone: not the main thread, or a handler of someone else's is set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, _interrupt)
