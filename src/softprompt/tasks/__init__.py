"""Task definitions; importing this package registers every task."""

from softprompt.tasks import glue, news, qa, superglue  # noqa: F401
from softprompt.tasks.base import SPLITS, TASKS, Example, Task, get_task
from softprompt.tasks.loading import load_examples, load_rows

__all__ = ["SPLITS", "TASKS", "Example", "Task", "get_task", "load_examples", "load_rows"]
