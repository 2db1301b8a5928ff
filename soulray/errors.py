"""User-facing errors: the CLI prints their message without a traceback."""


class SoulrayError(Exception):
    """A mistake the user can fix (bad config, bad input file, missing path)."""


class ConfigError(SoulrayError):
    """A configuration file or override that does not validate."""


class SourceError(SoulrayError):
    """A source table that cannot be read as Q&A rows."""


class StoreError(SoulrayError):
    """A version store operation that failed (missing version, conflict, bad checksum)."""


class VersionConflict(StoreError):
    """Another run already published this version."""
