"""Sources the project relies on are in the repository: a user of a clone has every file the code and docs cite."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_nothing_cites_a_file_that_lives_beside_the_repository():
    assert (REPO / "docs" / "references.md").is_file()
    citing = [path.relative_to(REPO) for folder in ("slimlab", "tests", "examples", "bench", "docs")
              for path in (REPO / folder).rglob("*") if path.suffix in (".py", ".yaml", ".md") and path.name != "test_docs.py"
              and "REFERENCES.md" in path.read_text(errors="ignore")]
    assert not citing, f"cite docs/references.md instead in {citing}"


# --- The README and docs/ as a guide: links resolve, commands parse, cheap commands run ---------------------------
import importlib  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402

import pytest  # noqa: E402

from slimlab.cli import build_parser, main  # noqa: E402

GUIDE = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]+$")  # RUN_ID, DIR, FILE: a synopsis, not a command to run
CHEAP = ("models", "datasets")  # read nothing big: run as written, as do dry runs


def _code_lines(path: Path):
    """Lines of indented (4-space) and fenced code blocks, each with its line number."""
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            yield number, line.strip()


def _commands(prefix: str):
    for path in GUIDE:
        for number, line in _code_lines(path):
            for part in line.split("&&"):
                part = part.strip().removeprefix(".venv/bin/")
                if part.startswith(prefix + " "):
                    yield f"{path.relative_to(REPO)}:{number}", part


def _words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def _synopsis(words: list[str]) -> bool:
    return any(PLACEHOLDER.match(w.strip("[]")) or "[" in w or "|" in w for w in words[2:])


def _subparser(words: list[str]):
    parser = build_parser()
    actions = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
    return actions[0].choices.get(words[1]) if actions and len(words) > 1 else None


@pytest.mark.parametrize("where, command", list(_commands("slimlab")))
def test_every_slimlab_command_in_the_guide_parses(where, command):
    words = _words(command)
    sub = _subparser(words)
    assert sub is not None, f"{where}: no command `slimlab {words[1:2]}`"
    known = {o for a in sub._actions for o in a.option_strings}
    flags = [w.split("=")[0] for w in words if w.startswith("--") and "|" not in w]
    assert not [f for f in flags if f not in known], f"{where}: unknown option in `{command}`"
    if _synopsis(words):
        return  # its command and options exist, which is all a synopsis claims
    try:
        build_parser().parse_args(words[1:])
    except SystemExit:
        pytest.fail(f"{where}: `{command}` does not parse")
    missing = [w for w in words if w.startswith(("examples/", "bench/")) and w.endswith((".yaml", ".py")) and not (REPO / w).exists()]
    assert not missing, f"{where}: {missing} do not exist"


@pytest.mark.parametrize("where, command", [c for c in _commands("slimlab")
                                            if not _synopsis(_words(c[1]))
                                            and (_words(c[1])[1] in CHEAP or "--dry-run" in _words(c[1]))])
def test_cheap_commands_in_the_guide_run_as_written(where, command, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(_words(command)[1:]) in (0, None), f"{where}: `{command}` failed: {capsys.readouterr().err}"
    assert capsys.readouterr().out.strip(), f"{where}: `{command}` printed nothing"


@pytest.mark.parametrize("where, command", list(_commands("python")))
def test_every_bench_script_in_the_guide_exists_with_its_options(where, command):
    words = _words(command)
    if words[1] == "-m":
        assert importlib.util.find_spec(words[2]), f"{where}: no module {words[2]}"
        return
    script = REPO / words[1]
    assert script.is_file(), f"{where}: {words[1]} does not exist"
    source = script.read_text()
    flags = [w.split("=")[0] for w in words[2:] if w.startswith("--")]
    assert not [f for f in flags if f'"{f}"' not in source], f"{where}: `{command}` uses options {words[1]} does not define"


def _python_imports():
    for path in GUIDE:
        text = path.read_text()
        for block in re.findall(r"```python\n(.*?)```", text, re.S):
            for module, names in re.findall(r"^from (slimlab[\w.]*) import ([\w, ]+)$", block, re.M):
                yield f"{path.relative_to(REPO)}", module, [n.strip() for n in names.split(",")]


@pytest.mark.parametrize("where, module, names", list(_python_imports()))
def test_python_in_the_guide_imports_what_exists(where, module, names):
    loaded = importlib.import_module(module)
    assert not [n for n in names if not hasattr(loaded, n)], f"{where}: {module} lacks some of {names}"


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _links():
    for path in GUIDE:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")):
                yield path, target


@pytest.mark.parametrize("path, target", list(_links()), ids=lambda v: str(v)[-50:])
def test_every_link_in_the_guide_resolves(path, target):
    file, _, anchor = target.partition("#")
    resolved = (path.parent / file).resolve() if file else path
    assert resolved.exists(), f"{path.relative_to(REPO)}: link to {target} does not resolve"
    if anchor and resolved.suffix == ".md":
        slugs = {_slug(h) for h in re.findall(r"^#+ (.*)$", resolved.read_text(), re.M)}
        assert anchor in slugs, f"{path.relative_to(REPO)}: no heading #{anchor} in {file or path.name}"


def test_the_readme_is_a_guide_not_a_notebook():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250
    assert len(list(_links())) > 10 and len(list(_commands("slimlab"))) > 20  # the checks above see the guide
