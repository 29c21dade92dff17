"""The one exception type for mistakes a user can fix, and the one for a run stopped by a signal.

The CLI prints a UserError's message as a single line and exits with code 2; a Stopped run exits with
128 + the signal number, as a shell does; anything else is a bug and keeps its traceback. Messages name the problem and then the fix, e.g.
"unknown task 'rtee'; choose one of: cola, ... (did you mean 'rte'?)".
"""

import difflib
import signal
import sys

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input: a one-line message that names the problem and how to fix it."""


class Stopped(Exception):
    """A SIGINT or SIGTERM stopped the run after saving a checkpoint; --resume goes on from there."""

    def __init__(self, signum: int, where: str):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}")


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_choice(kind: str, value, choices) -> UserError:
    """The standard error for a value that is not one of a fixed set of names."""
    choices = sorted(choices)
    return UserError(
        f"unknown {kind} '{value}'; choose one of: {', '.join(choices)}{did_you_mean(value, choices)}"
    )


def run_command(handler, args) -> int:
    """handler(args)'s exit code, with the command line's error handling: a UserError is one line and exit
    code 2, a stopped run 128 + its signal, Ctrl-C 130 (`blo-mixup` itself, and each `compare --workers` process)."""
    try:
        return handler(args)
    except UserError as e:
        print(f"blo-mixup: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Stopped as e:
        print(f"blo-mixup: {e}; re-run the same command (finetune: with --resume) to go on", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("blo-mixup: interrupted; finished runs and checkpoints are kept: re-run the same command "
              "(finetune: with --resume) to go on", file=sys.stderr)
        return 130
