"""The commands layer: every command's flags and handler in blo_mixup/commands/, argparse nowhere else,
and each command's work callable from Python with its options as keywords."""

import ast
from pathlib import Path

import pytest

import blo_mixup
from blo_mixup.commands import COMMANDS, build_parser
from blo_mixup.errors import UserError

PACKAGE = Path(blo_mixup.__file__).parent


def test_argparse_is_imported_only_by_the_commands_layer():
    importers = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        if "argparse" in names:
            importers.append(path.relative_to(PACKAGE).as_posix())
    assert importers and all(p.startswith("commands/") for p in importers), importers


def test_every_command_has_a_module_and_the_parser_lists_them_all():
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert list(sub.choices) == list(COMMANDS) == ["finetune", "export", "methods", "predict", "compare", "curves", "bench",
                                                    "hypergradients"]
    for name, module in COMMANDS.items():
        assert module.NAME == name and callable(module.add_parser) and callable(module.run)


def test_compare_and_curves_take_their_options_as_keywords(tmp_path):
    from blo_mixup.compare import run_compare
    from blo_mixup.curves import run_curves

    with pytest.raises(UserError, match="no finished run"):
        run_compare(tasks="rte", methods="vanilla", seeds="1", output_dir=tmp_path / "cmp", report_only=True)
    with pytest.raises(UserError, match="unknown head 'max'"):
        run_curves(tasks="rte", heads="max", output_dir=tmp_path / "curves")
