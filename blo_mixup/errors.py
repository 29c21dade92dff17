"""The one exception type for mistakes a user can fix.

The CLI prints its message as a single line and exits with code 2; anything else is a bug and keeps
its traceback. Messages name the problem and then the fix, e.g.
"unknown task 'rtee'; choose one of: cola, ... (did you mean 'rte'?)".
"""

import difflib


class UserError(Exception):
    """Bad input: a one-line message that names the problem and how to fix it."""


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
