"""MOI: following many upload tasks with a page of ``GET /task/list`` instead of one ``GET /task/files``
each.

Every upload makes a task of its own, and asking each task's ``/task/files`` costs a request per task per
poll: per file with ``--batch-files 1``, and 25 requests for 500 batched files. ``/task/list``, newest
first, shows ``LIST_PAGE`` tasks a page with their ``status`` (4 = finished) and, from MOI 5.0, their
``success_file_count`` / ``failed_file_count``. What a listed task says about the files its upload
carried (``verdict``):

- running, pausing or paused: still pending, nothing more to ask;
- finished with no failed file and as many that succeeded as the upload carried: all done;
- anything else asks that task's ``/task/files``: finished with a failure (the reason is only there),
  no counts (the seed document's form), a status the documents do not define.

The list holds every task of the account: other writers' uploads and connector load tasks too, which
are passed over (only the ids asked about are looked at). A task not in the pages read (pushed out of
the window by newer tasks, shifted by a task made between two pages, or left out by MOI) is just not
seen this round and asked the old way: nothing is failed for being absent from the list.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from ingest.errors import PermanentError, PermissionDenied, TransientError
from ingest.platforms.moi.wire import TaskQuery, TaskState, TaskStatus

if TYPE_CHECKING:  # the client (and aiohttp) is imported only by a run that sends
    from ingest.platforms.moi.client import MoiClient

__all__ = ["LIST_MAX_PAGES", "LIST_PAGE", "LIST_PAGE_MIN", "TaskOrder", "Verdict", "listed_tasks", "verdict"]

#: Tasks per ``/task/list`` page. The documents give no limit; 100 is what the client pages by elsewhere.
LIST_PAGE = 100
#: Pages read at most in one poll, so an account busy with other writers' tasks costs a bounded number
#: of requests before falling back to ``/task/files``.
LIST_MAX_PAGES = 5
#: Smallest page asked for (``TaskOrder.page_size``), and the share of room added to our own tasks for
#: other writers' tasks made meanwhile.
LIST_PAGE_MIN = 20
LIST_PAGE_SLACK = 0.5

_STILL_RUNNING = frozenset({TaskStatus.RUNNING, TaskStatus.PAUSING, TaskStatus.PAUSED})


class Verdict(enum.Enum):
    DONE = "done"
    PENDING = "pending"
    #: The list cannot tell: ask the task's ``/task/files``.
    ASK_FILES = "ask files"


def verdict(task: TaskState | None, files: int = 1) -> Verdict:
    """What ``task`` (as listed; ``None`` = not seen) says of the ``files`` files its upload carried."""
    if task is None:
        return Verdict.ASK_FILES
    if task.status in _STILL_RUNNING:
        return Verdict.PENDING
    if (
        task.status == TaskStatus.FINISHED
        and task.failed_file_count == 0
        and task.success_file_count is not None
        and task.success_file_count >= files
    ):
        return Verdict.DONE
    return Verdict.ASK_FILES


class TaskOrder:
    """The order this process made its upload tasks in, kept for the tasks still followed: how deep in the
    newest-first list the oldest of a poll's tasks can sit, hence how big a page the poll needs.

    With one file per request a poll awaits ~30 tasks; a page of ``LIST_PAGE`` (100, ~42 KB) cost both
    sides three times what the tasks asked about need (benchmarks/README.md, Issue 11 item 19)."""

    def __init__(self) -> None:
        self._made = 0
        self._order: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._order)

    def made(self, task_id: str) -> None:
        self._made += 1
        self._order[task_id] = self._made

    def settled(self, task_ids: Iterable[str]) -> None:
        """Forget tasks no longer followed (their files are all done or failed)."""
        for task_id in task_ids:
            self._order.pop(task_id, None)

    def page_size(self, task_ids: Collection[str]) -> int:
        """Our tasks made since the oldest of ``task_ids`` (every one of them newer in the list), half as
        many again for other writers', within ``LIST_PAGE_MIN``..``LIST_PAGE``. A task this process did not
        make (followed from an earlier run's manifest) could sit anywhere: a full page."""
        orders = [self._order.get(task_id) for task_id in task_ids]
        known = [order for order in orders if order is not None]
        if not known or len(known) < len(orders):
            return LIST_PAGE
        ours = self._made - min(known) + 1
        return min(LIST_PAGE, max(LIST_PAGE_MIN, math.ceil(ours * (1 + LIST_PAGE_SLACK))))


async def listed_tasks(
    client: MoiClient, task_ids: Collection[str], page_size: int | None = None
) -> dict[str, TaskState] | None:
    """The tasks of ``task_ids`` among the newest ``/task/list`` pages of ``page_size`` tasks (default
    ``LIST_PAGE``), by id; ``None`` when MOI refuses the list (the caller stops using it).

    Reads until every id is seen, the list ends, the page holds only tasks older than all of ours (task
    ids are snowflakes: the seed's examples grow with ``created_at``), or ``LIST_MAX_PAGES`` were read. A
    transient error ends the reading: what was not seen yet is asked the old way.
    """
    wanted = set(task_ids)
    size = page_size or LIST_PAGE
    oldest = min((int(i) for i in wanted if i.isdigit()), default=None)
    seen: dict[str, TaskState] = {}
    for page_no in range(1, LIST_MAX_PAGES + 1):
        query = TaskQuery(order_by="created_at", is_desc=True, page=page_no, page_size=size)
        try:
            page = await client.list_task_states(query, wanted)
        except TransientError:
            break
        except (PermissionDenied, PermanentError):
            return None
        for task_id, task in page.found.items():
            seen.setdefault(task_id, task)
        if (
            len(seen) == len(wanted)
            # Fewer than asked: the end, or MOI caps page_size below ours (then page 2 would skip tasks).
            or len(page.ids) < size
            or page_no * size >= page.total
            or _all_older(page.ids, oldest)
        ):
            break
    return seen


def _all_older(ids: list[str], oldest: int | None) -> bool:
    """Whether every task of the page was made before the oldest task asked about."""
    return oldest is not None and all(i.isdigit() and int(i) < oldest for i in ids)
