"""What every settings class shares: strict pydantic models and the name patterns several stages check.

Each stage's settings live beside the stage (soulray/<stage>/settings.py, or a filter's spec in its
filter's file); soulray/config.py assembles them into the job configs and loads those from YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints

from soulray.errors import ConfigError

EnvVarName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# Dataset and version names become path segments (local folders, S3 keys): letters, digits and ._-,
# starting with a letter or digit, so no name can be '..', hidden, absolute or hold a '/'.
DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
VERSION_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
DatasetName = Annotated[str, StringConstraints(pattern=DATASET_NAME)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def read_builtin_yaml(name_or_path: str, builtin: Path, *, setting: str, kind: str,
                      required: tuple[str, ...]) -> tuple[Path, dict[str, Any]]:
    """A versioned YAML file shipped in `builtin` (named without a suffix: 'soulchat-v1') or a user's
    file (a path), read and checked to hold `required` keys; errors name `setting` and the choices."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = builtin / f"{name_or_path}.yaml"
        if not path.is_file():
            builtins = sorted(p.stem for p in builtin.glob("*.yaml"))
            raise ConfigError(f"{setting}: unknown {kind} {name_or_path!r}; builtins are {builtins}, "
                              f"or give the path of a {kind} file")
    if not path.is_file():
        raise ConfigError(f"{setting}: {kind} file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    missing = set(required) - set(data)
    if missing:
        raise ConfigError(f"{path}: a {kind} needs {sorted(missing)}")
    return path, data
