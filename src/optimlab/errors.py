"""The errors optimlab reports to users as one clear line (no traceback wall)."""


class OptimlabError(Exception):
    """A problem the user can fix; the message says what and how."""

    exit_code = 1
    status = "failed"


class ConfigError(OptimlabError):
    """Bad input found before training: a config value, a dataset, a device, a run folder."""

    exit_code = 2
    status = "invalid_config"


# The same kind of mistake, named for where it was found.
class DataError(ConfigError):
    """A dataset that is missing or unreadable."""


class DeviceError(ConfigError):
    """A device that was asked for and is not present."""


class CheckpointError(ConfigError):
    """A run folder to resume from whose checkpoint is missing, corrupt or does not match."""


class Diverged(OptimlabError):
    """The training loss became NaN or infinite."""

    status = "diverged"

    def __init__(self, epoch: int, step: int, loss: float, last_finite_loss: float | None):
        self.epoch, self.step, self.loss, self.last_finite_loss = epoch, step, loss, last_finite_loss
        super().__init__(
            f"training diverged: loss became {loss} at epoch {epoch}, step {step} "
            f"(last finite loss: {last_finite_loss}); try a smaller lr"
        )

    def __reduce__(self):  # picklable, so launchers running jobs in other processes return it
        return (type(self), (self.epoch, self.step, self.loss, self.last_finite_loss))


class Pruned(OptimlabError):
    """A sweep's pruner stopped the trial early: not a failure."""

    status = "pruned"
