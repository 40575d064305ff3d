"""The errors a user fixes: each message names the param, the file or the reason."""


class ParamError(ValueError):
    """A bad params.yaml entry; the message names the dotted key."""


class SourceError(ValueError):
    """A misconfigured source: the message names the param and the path."""


class BadMidi(ValueError):
    """A file that cannot be used; the message is the reason recorded in rejects."""


class NothingToLearn(Exception):
    """A stage whose corpus gives it nothing to learn or score (no label, one class, too few
    pieces, an empty or one-class split); str() is the reason. `run_main` then writes
    `status: skipped` and the reason as the stage's metrics and exits 0."""
