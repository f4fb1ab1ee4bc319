"""The `muxdeploy` command line. Each command lives in its own module under muxdeploy/commands/.

Every user-facing failure is one line on stderr: exit code 2 for bad usage or input, 1 for an
internal failure; `--debug` shows the traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Any

import click

from muxdeploy.core.errors import MuxError


class MuxGroup(click.Group):
    """A click group that loads commands from muxdeploy.commands and turns errors into one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import muxdeploy.commands as pkg

        for info in pkgutil.iter_modules(pkg.__path__):
            module = importlib.import_module(f"muxdeploy.commands.{info.name}")
            command = getattr(module, "command", None)
            if isinstance(command, click.Command):
                self.add_command(command)

    def invoke(self, ctx: click.Context) -> Any:
        debug = "--debug" in sys.argv[1:] or bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except MuxError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except click.UsageError as exc:
            # a bad flag or argument of a command: one line too, instead of click's usage block
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            click.echo(f"error: {exc.format_message()} (see `{where} --help`)", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            if debug:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(
                f"internal error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)", err=True
            )
            ctx.exit(1)


@click.group(cls=MuxGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="muxdeploy")
def main(debug: bool) -> None:
    """Ship DataMUX models: N inputs through one network pass, on GPUs, Jetson and CPUs.

    \b
    Typical flow:
      muxdeploy train --task sentiment --preset tiny --n 10 -o ckpt.pt
      muxdeploy export ckpt.pt --n 10          # -> ./mux_model (ONNX + manifest, parity-checked)
      muxdeploy build-engine --int8 --calib-data dev.jsonl
      muxdeploy validate --data dev.jsonl       # every precision built, and what group-mates do
      muxdeploy run --input in.jsonl --output out.jsonl
    Choose N and precision:  muxdeploy tune b1 b2 b5 b10 --data dev.jsonl --max-drop 2
    See the accuracy / speed trade-off of trained models:  muxdeploy demo
    """


if __name__ == "__main__":  # pragma: no cover
    main()
