"""The code stays easy to change: every function fits on one screen, and no compression step keeps a list of extras."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "slimlab"


def test_every_function_in_the_package_is_at_most_60_lines():
    long = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60]
    assert not long, long


@pytest.mark.parametrize("folder", ["prune", "quantize"])
def test_compression_steps_name_no_extra_and_ask_their_declarations(folder):
    from slimlab.extras import extras

    keys = {key for extra in extras().values() for key in extra.off}
    assert keys  # the weight average and Lookahead at least
    naming = [(path.name, key) for path in (PACKAGE / folder).rglob("*.py") for key in keys if key in path.read_text()]
    assert not naming, naming
