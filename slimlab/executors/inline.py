"""The `inline` executor: every stage in this process, one after another (debugging, notebooks, the serial baseline)."""
from __future__ import annotations

import sys

from tqdm import tqdm

from slimlab.executors import ExecOptions, Outcome, final_statuses, register_executor
from slimlab.executors.schedule import Schedule, ScheduleOptions
from slimlab.executors.tasks import execute_task
from slimlab.plan import Plan
from slimlab.store import Store


@register_executor("inline")
def execute_inline(plan: Plan, store: Store, options: ExecOptions) -> Outcome:
    """Run the plan's tasks in order in this process; a failed run is recorded and the study goes on."""
    settings = ScheduleOptions(options.retries, options.max_same_failures, options.defer_latency, options.force, options.retrain)
    schedule = Schedule(plan, store, settings)
    messages = []
    with tqdm(desc="study", unit="task", disable=not options.progress or not sys.stderr.isatty()) as bar:
        while (task := schedule.next_task()) is not None:
            bar.set_postfix_str(task["label"])
            if line := schedule.finished(task, execute_task(task, store)):
                tqdm.write(f"slimlab: {line}")
                messages.append(line)
            bar.update()
    return Outcome(final_statuses(plan, store), messages, schedule.stopped)
