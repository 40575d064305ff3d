"""The errors a user fixes: each message names the param, the file or the reason."""


class ParamError(ValueError):
    """A bad params.yaml entry; the message names the dotted key."""


class SourceError(ValueError):
    """A misconfigured source: the message names the param and the path."""


class BadMidi(ValueError):
    """A file that cannot be used; the message is the reason recorded in rejects."""
