"""When the poller starts a round: rounds are spaced by ``poll_initial`` so that files submitted one after
another are asked about together, except when every followed file is already due, since waiting could
then group nothing more (``ingest.engine.poller``'s docstring). The rule is tested on the clock values
themselves, so no test here waits or measures time."""

from __future__ import annotations

import math
from pathlib import Path

from ingest.engine.poller import all_due, next_start
from ingest.engine.state import Tracked
from ingest.models import FileItem, Receipt


def followed(*next_polls: float) -> list[Tracked]:
    """Files followed by the poller, next due at ``next_polls`` (seconds on the monotonic clock)."""
    return [
        Tracked(
            item=FileItem(f"f{i}.txt", Path(f"/src/f{i}.txt"), 1, 0),
            receipt=Receipt(f"f{i}.txt", task_id=str(i)),
            attempts=1,
            deadline=3600.0,
            next_poll=due,
            interval=0.1,
        )
        for i, due in enumerate(next_polls)
    ]


def test_a_round_waits_for_the_spacing_while_some_file_is_not_yet_due() -> None:
    """One file due at 10.0, another at 10.05, the last round at 9.95: waiting until 10.05 (the spacing's
    end) asks about both in one request."""
    files = followed(10.0, 10.05)
    assert not all_due(files, now=10.0)
    assert next_start(files, next_round=10.05) == 10.05


def test_a_round_starts_as_soon_as_every_followed_file_is_due() -> None:
    """A run's last files: due at 10.02 and 10.03, the spacing ends at 10.09. No file submitted from now
    on is due before 10.09, so the round starts at 10.03, when the last of them is due."""
    files = followed(10.02, 10.03)
    assert next_start(files, next_round=10.09) == 10.03
    assert not all_due(files, now=10.025)
    assert all_due(files, now=10.03)


def test_the_spacing_still_holds_when_a_followed_file_is_due_after_it() -> None:
    """One file due at 10.02, another not before 10.2 (polled before, its interval grown): the round waits
    for the spacing's end at 10.09 as before, and asks about the first file then."""
    files = followed(10.02, 10.2)
    assert not all_due(files, now=10.05)
    assert next_start(files, next_round=10.09) == 10.09


def test_with_nothing_followed_no_round_is_planned() -> None:
    assert next_start([], next_round=10.0) == math.inf
    assert not all_due([], now=10.0)


def test_a_file_due_after_the_spacing_sets_the_next_round() -> None:
    files = followed(10.5, 10.7)
    assert next_start(files, next_round=10.1) == 10.5
