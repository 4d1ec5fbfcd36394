"""The errors optimlab reports to users as one clear line (no traceback wall)."""


class OptimlabError(Exception):
    """A problem the user can fix; the message says what and how."""

    exit_code = 1
    status = "failed"


class ConfigError(OptimlabError):
    """Bad configuration, found before any training starts."""

    exit_code = 2
    status = "invalid_config"


class DataError(OptimlabError):
    """A dataset that is missing or unreadable."""

    exit_code = 2
    status = "invalid_config"


class DeviceError(OptimlabError):
    """A device that was asked for and is not present."""

    exit_code = 2
    status = "invalid_config"


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


class CheckpointError(OptimlabError):
    """A run folder to resume from whose checkpoint is missing, corrupt or does not match."""

    exit_code = 2
    status = "invalid_config"
