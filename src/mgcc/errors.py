"""The errors mgcc's library code raises. Only the command line (`mgcc.cli`) turns them into an exit status: it
prints `mgcc <command>: error: <message>` on one line and exits 2. Library code never raises SystemExit.

`PresetError` (`mgcc.presets`) and `StageError` (`mgcc.stages`) derive from `MgccError`; the data package's
`DatasetError` (`mgcc.data.records`) is caught by the command line as well.
"""


class MgccError(Exception):
    """A problem the user can fix, with a one-line message that names what to fix."""


class UsageError(MgccError, ValueError):
    """An argument or option that cannot be used (its message names the option, e.g. `--out`)."""
