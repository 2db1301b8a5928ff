"""User-facing errors: the CLI prints their message without a traceback."""

from soulray.redaction import redact


class SoulrayError(Exception):
    """A mistake the user can fix (bad config, bad input file, missing path). Its message is redacted
    when it is made, so no copy of it (a Ray task error, a worker's log, a traceback) holds a secret."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(redact(str(message)), *args)


class ConfigError(SoulrayError):
    """A configuration file or override that does not validate."""


class SourceError(SoulrayError):
    """A source table that cannot be read as Q&A rows."""


class StoreError(SoulrayError):
    """A version store operation that failed (missing version, conflict, bad checksum)."""


class VersionConflict(StoreError):
    """Another run already published this version."""


class Interrupted(KeyboardInterrupt):
    """The job was asked to stop (SIGTERM, SIGINT). A KeyboardInterrupt, so no `except Exception`
    swallows it; `notes` say what was saved (e.g. how many paid calls are in the cache)."""

    def __init__(self, signum: int, notes: list[str] | None = None) -> None:
        super().__init__(signum)
        self.signum, self.notes = signum, notes or []
