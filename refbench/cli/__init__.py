"""The ``refbench`` command line: one module per command, each a thin caller of the core.

Every user mistake ends in one line on stderr and exit status 2, naming what is wrong and how to
fix it; results computed before the mistake surfaced stay in the store. Any other error is a
bug: one line too, with the hint to rerun with ``--debug`` for its traceback. Heavy libraries
are imported only by the commands that run models, so ``refbench ls`` answers instantly.
"""

from __future__ import annotations

import shlex
import sys
import warnings
from typing import Any

from refbench.cli import common, grid, listing, report, run, train
from refbench.errors import UserError

COMMAND_MODULES = (listing, run, grid, report, train)


def _one_line_warning(message: Any, category: type, filename: str, lineno: int,
                      line: str | None = None) -> str:
    return f"refbench: warning: {message}\n"


def build_parser() -> common.Parser:
    parser = common.Parser(prog="refbench", description="Benchmark text-to-image diffusion models "
                           "as text-driven image segmenters.",
                           epilog="example:\n  refbench run --methods vpd,diffsegmenter_ab --backbone "
                                  "shapes --set vpd.checkpoint=shipped")
    common.global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=common.Parser,
                                metavar="COMMAND")
    add_parser = sub.add_parser

    def with_globals(*args: Any, **kwargs: Any) -> Any:  # global options after the command too
        p = add_parser(*args, **kwargs)
        common.global_options(p, suppress=True)
        return p

    sub.add_parser = with_globals  # type: ignore[method-assign]
    for module in COMMAND_MODULES:
        module.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning  # type: ignore[assignment]
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as error:
        message = f"refbench: error: {error}"
        if error.fix_args and args.command in ("run", "grid", "report", "train"):
            message += f"; to run on the bundled model: refbench {shlex.join(argv + error.fix_args)}"
        print(message, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("refbench: interrupted; finished batches are stored, rerun to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`refbench reported | head`): nothing to say
        sys.stderr.close()
        return 0
    except Exception as error:  # a bug: one line, the traceback on request
        if getattr(args, "debug", False):
            raise
        where = error.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        place = f" at {where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where else ""
        print(f"refbench: internal error: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
              f"{place}; rerun with --debug for the traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
