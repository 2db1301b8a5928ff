"""What every settings class shares: strict pydantic models and the name patterns several stages check.

Each stage's settings live beside the stage (soulray/<stage>/settings.py, or a filter's spec in its
filter's file); soulray/config.py assembles them into the job configs and loads those from YAML.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

EnvVarName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
# Dataset and version names become path segments (local folders, S3 keys): letters, digits and ._-,
# starting with a letter or digit, so no name can be '..', hidden, absolute or hold a '/'.
DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
VERSION_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
DatasetName = Annotated[str, StringConstraints(pattern=DATASET_NAME)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
