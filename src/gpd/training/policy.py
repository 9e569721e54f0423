"""What a run may do: train as configured, or check the whole configuration quickly (a dry run).

``gpd train --dry-run`` builds the same data, models, losses, loaders and optimizer as a
real run and trains them, within caps: :data:`DRY_RUN` is the policy of such a check,
:data:`FULL_RUN` that of a real run (no caps). The builders and the loop read the policy,
never a flag of their own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunPolicy:
    """Caps on a run (``None``: as configured) and what it writes.

    ``data_batches``: a small data set instead of the configured one, this many global
    batches of training (and test) samples, with images of at most ``max_image_size``
    pixels; ``stand_ins``: a synthetic data set stands in for data that is not there and
    random weights for checkpoint files that do not exist yet."""

    name: str = "run"
    max_epochs: int | None = None
    max_steps: int | None = None  # optimisation steps per epoch
    max_eval_batches: int | None = None  # batches of each evaluation split
    max_batch_per_process: int | None = None  # images per process and step
    data_batches: int | None = None
    max_image_size: int | None = None
    val_fraction: float | None = None  # of the small data set's training samples, when data.val_split is set
    max_workers: int | None = None  # DataLoader worker processes
    stand_ins: bool = False
    tensorboard: bool = True

    def epochs(self, configured: int) -> int:
        """The last epoch the run trains."""
        return configured if self.max_epochs is None else min(configured, self.max_epochs)

    def last_step(self, step: int) -> bool:
        """Whether the epoch ends after ``step`` (counted from 0) under the step cap."""
        return self.max_steps is not None and step + 1 >= self.max_steps

    def batch(self, configured: int, world_size: int) -> int:
        """The global batch: ``configured``, or at most ``max_batch_per_process`` per process."""
        if self.max_batch_per_process is None:
            return configured
        return min(configured, self.max_batch_per_process * world_size)

    def workers(self, configured: int) -> int:
        return configured if self.max_workers is None else min(configured, self.max_workers)


FULL_RUN = RunPolicy()

DRY_RUN = RunPolicy(
    name="dry run",
    max_epochs=1,
    max_steps=2,
    max_eval_batches=2,
    max_batch_per_process=8,  # ImageNet batches are large
    data_batches=4,
    max_image_size=32,
    val_fraction=0.25,
    max_workers=1,  # one worker process still checks that workers work
    stand_ins=True,
    tensorboard=False,
)


def as_policy(dry_run: bool | RunPolicy) -> RunPolicy:
    """A policy from what callers pass: a policy, or True for :data:`DRY_RUN` and False for :data:`FULL_RUN`."""
    if isinstance(dry_run, RunPolicy):
        return dry_run
    return DRY_RUN if dry_run else FULL_RUN
