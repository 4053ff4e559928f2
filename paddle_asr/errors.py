"""The one exception type users see.

Every error that a user can fix (bad data, bad config, missing file) is raised as `AsrError` with a
message that names the file, line or utterance and says what to do. The command line prints the
message without a traceback and exits non-zero; anything else is a bug and keeps its traceback.
"""


class AsrError(Exception):
    """An error caused by input the user controls; the message says what to do about it."""
