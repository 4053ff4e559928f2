"""The exceptions users see.

Every error that a user can fix (bad data, bad config, missing file) is raised as `AsrError` with a
message that names the file, line or utterance and says what to do. The command line prints the
message without a traceback and exits non-zero; anything else is a bug and keeps its traceback.
"""


class AsrError(Exception):
    """An error caused by input the user controls; the message says what to do about it."""


class TrainingStopped(Exception):
    """SIGTERM arrived: the step finished, `checkpoint` holds the full state, the run can resume."""

    def __init__(self, checkpoint: str, step: int) -> None:
        super().__init__(f"stopped by SIGTERM after update {step}; checkpoint {checkpoint} holds the full state: "
                         "run stage 1 again to resume")
        self.checkpoint, self.step = checkpoint, step
