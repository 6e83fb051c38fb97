"""Include/exclude patterns behave like rsync's and .gitignore's."""

import pytest

from ingest.sources.globs import GlobSet


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.pdf", "a.pdf", True),
        ("*.pdf", "deep/down/a.pdf", True),
        ("*.pdf", "a.pdf.txt", False),
        ("docs/*.md", "docs/a.md", True),
        ("docs/*.md", "docs/sub/a.md", False),
        ("docs/**/*.md", "docs/a.md", True),
        ("docs/**/*.md", "docs/x/y/a.md", True),
        ("build/**", "build/x/y.o", True),
        ("build", "src/build", True),
        ("?.txt", "a.txt", True),
        ("?.txt", "ab.txt", False),
        ("[ab].txt", "b.txt", True),
        ("[!ab].txt", "b.txt", False),
        ("*", "a/b", True),
    ],
)
def test_pattern_matching(pattern: str, path: str, expected: bool) -> None:
    """Patterns without '/' match base names at any depth; with '/' the whole relative path."""
    assert GlobSet([pattern]).matches(path) is expected


def test_empty_set_is_falsy_and_matches_nothing() -> None:
    """No patterns means no filter."""
    globs = GlobSet([])
    assert not globs
    assert not globs.matches("a.txt")
