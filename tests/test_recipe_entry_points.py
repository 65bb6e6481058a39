"""One entry-point shape for every recipe script: each
``recipes/<Dataset>/<task>/<script>.py`` is a thin wrapper whose only
statement under ``__main__`` is
``speechbrain_mamba.<task>.recipe.run_recipe(sys.argv[1:][, mode])``, and
every ``run_recipe`` takes the command line first (``mode`` second where a
task has several scripts, with the value each script passes accepted)."""

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "recipes").rglob("*.py"))


def entry_call(path: Path):
    """(module imported from, positional arguments after argv) of the
    ``run_recipe`` call under ``if __name__ == "__main__":``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = None
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(
            alias.name == "run_recipe" for alias in node.names
        ):
            module = node.module
    (main,) = [n for n in tree.body if isinstance(n, ast.If)]
    assert ast.unparse(main.test) == "__name__ == '__main__'", path
    (statement,) = main.body
    call = statement.value
    assert ast.unparse(call.func) == "run_recipe", path
    assert ast.unparse(call.args[0]) == "sys.argv[1:]", path
    assert not call.keywords, path
    return module, [ast.literal_eval(a) for a in call.args[1:]]


def test_there_is_a_script_per_recipe():
    assert len(SCRIPTS) == 9


@pytest.mark.parametrize(
    "path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT / "recipes"))
)
def test_script_calls_run_recipe_of_its_task(path):
    module, extra = entry_call(path)
    assert module.startswith("speechbrain_mamba.") and module.endswith(
        ".recipe"
    ), path
    run_recipe = importlib.import_module(module).run_recipe
    params = list(inspect.signature(run_recipe).parameters.values())
    assert params[0].name == "argv"
    positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert all(p.default is not p.empty for p in positional[1:]), module
    if extra:
        assert [p.name for p in positional[1:]] == ["mode"], module
        (mode,) = extra
        # a wrong mode is refused by name before any work is done; the
        # script's mode gets past that check (to the missing hparams file)
        missing = str(ROOT / "no_such_hparams.yaml")
        with pytest.raises(ValueError, match="mode must be"):
            run_recipe([missing], mode + "-typo")
        with pytest.raises(FileNotFoundError, match="no_such_hparams"):
            run_recipe([missing], mode)
