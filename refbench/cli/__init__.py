"""The ``refbench`` command line: one module per command, each a thin caller of the core.

Every user mistake ends in one line on stderr and exit status 2, naming what is wrong and how to
fix it; results computed before the mistake surfaced stay in the store. Any other error is a
bug: one line too, with the hint to rerun with ``--debug`` for its traceback. Heavy libraries
are imported only by the commands that run models, so ``refbench ls`` answers instantly.
"""

from __future__ import annotations

import errno
import shlex
import sys
import warnings
from typing import Any

from refbench.cli import common, data, grid, listing, report, run, train
from refbench.errors import UserError

COMMAND_MODULES = (listing, run, grid, report, train, data)


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
    except OSError as error:  # the environment: a full disk, a read-only folder...
        if getattr(args, "debug", False) or error.errno not in ENVIRONMENT_ERRORS:
            return _internal_error(args, error)
        print(f"refbench: error: {environment_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("refbench: interrupted; finished batches are stored, rerun to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`refbench reported | head`): nothing to say
        sys.stderr.close()
        return 0
    except Exception as error:  # a bug: one line, the traceback on request
        return _internal_error(args, error)


# errno values that are the machine's state, not a bug: each has its own message
ENVIRONMENT_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                      errno.EROFS: "the file system is read-only",
                      errno.EACCES: "permission is denied", errno.EPERM: "permission is denied",
                      errno.ENOTDIR: "a part of the path is a file, not a folder",
                      errno.EISDIR: "it is a folder, not a file"}


def environment_message(error: OSError) -> str:
    """One line for an ``OSError`` of the environment: the path, the cause, the fix."""
    where = f" on {error.filename}" if error.filename else ""
    cause = ENVIRONMENT_ERRORS[error.errno]
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space or write elsewhere (--out); rows stored before are kept, rerun to resume"
    else:
        fix = "fix the path's permissions or write elsewhere (--out)"
    return f"{error.strerror or cause}{where}: {cause}; {fix}"


def _internal_error(args: Any, error: BaseException) -> int:
    if getattr(args, "debug", False):
        raise error
    where = error.__traceback__
    while where is not None and where.tb_next is not None:
        where = where.tb_next
    place = f" at {where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where else ""
    text = str(error).splitlines()[0][:200] if str(error) else ""
    print(f"refbench: internal error: {type(error).__name__}: {text}{place}; rerun with --debug "
          f"for the traceback and report it", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
