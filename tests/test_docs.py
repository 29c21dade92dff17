"""The docs stay true to the code: every CLI flag is documented, the README opens with the two commands."""

from pathlib import Path

from blo_mixup.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def subcommand_flags():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, subparser in sub.choices.items():
        for action in subparser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option not in ("--help",) and not option.startswith("--no-"):
                    yield name, option


def test_every_flag_is_in_the_cli_reference():
    reference = (ROOT / "docs" / "cli.md").read_text()
    missing = sorted({f"{cmd} {flag}" for cmd, flag in subcommand_flags() if f"`{flag}" not in reference})
    assert not missing, f"flags missing from docs/cli.md: {missing}"


def test_readme_opens_with_the_two_commands():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    commands = [line.split("#")[0].strip() for line in lines[1:6] if line.startswith("make ")]
    assert commands == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
