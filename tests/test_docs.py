"""Sources the project relies on are in the repository: a user of a clone has every file the code and docs cite."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_nothing_cites_a_file_that_lives_beside_the_repository():
    assert (REPO / "docs" / "references.md").is_file()
    citing = [path.relative_to(REPO) for folder in ("slimlab", "tests", "examples", "bench", "docs")
              for path in (REPO / folder).rglob("*") if path.suffix in (".py", ".yaml", ".md") and path.name != "test_docs.py"
              and "REFERENCES.md" in path.read_text(errors="ignore")]
    assert not citing, f"cite docs/references.md instead in {citing}"
