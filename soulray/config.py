"""Typed job configuration: a YAML file plus `--set key.path=value` overrides.

Every job has one pydantic model, assembled here from the settings each stage defines beside itself:
soulray/sources/settings.py (sources, the clean job's input), soulray/store/settings.py (storage, s3),
soulray/runtime.py (ray), soulray/llm/settings.py (API keys, limits, prices), soulray/rewrite/settings.py,
the filters' own files with soulray/filters/registry.py (the chains), soulray/dedup/settings.py,
soulray/evaluate/settings.py and soulray/train/settings.py. Unknown keys, wrong types and missing required
values are errors that name the key and the file. A config never holds a secret: only the *name* of an
environment variable (or a file path) that the worker resolves itself, so configs can be logged, hashed and
stored in manifests as they are.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from soulray.dedup.settings import DedupConfig, DedupJobConfig
from soulray.errors import ConfigError
from soulray.evaluate.settings import (
    CheckpointGenerationConfig,
    DecodingConfig,
    EvalModel,
    EvalSplitConfig,
    JudgeConfig,
)
from soulray.filters.registry import FiltersConfig
from soulray.fs import S3Config
from soulray.gate.settings import QualityGateSettings
from soulray.llm.settings import ApiConfig
from soulray.redaction import find_secret, redact
from soulray.rewrite.settings import RewriteConfig
from soulray.runtime import RayConfig
from soulray.settings import DatasetName, StrictModel
from soulray.sources.settings import CleanInput, SourceSpec
from soulray.store.settings import StorageConfig
from soulray.train.settings import (
    FinetuneModelConfig,
    FinetuneSamplesConfig,
    FinetuneTrainerConfig,
    OptimConfig,
)


class CleanConfig(StrictModel):
    dataset: DatasetName = "cleaned"
    input: CleanInput
    storage: StorageConfig = StorageConfig()
    s3: S3Config = S3Config()
    ray: RayConfig = RayConfig()
    filters: FiltersConfig = FiltersConfig()
    dedup: DedupConfig = Field(default_factory=lambda: DedupConfig())
    dedup_against: str | None = Field(None, description="a published version path: dialogues that duplicate its "
                                                        "rows are rejected")
    limit: int | None = Field(None, ge=1, description="read at most this many dialogues (smoke runs)")


class RegenerateConfig(StrictModel):
    dataset: DatasetName = "soulchat"
    sources: list[SourceSpec] = Field(min_length=1)
    storage: StorageConfig = StorageConfig()
    s3: S3Config = S3Config()
    ray: RayConfig = RayConfig()
    rewrite: RewriteConfig = RewriteConfig()
    filters: FiltersConfig = FiltersConfig()
    dedup: DedupJobConfig = Field(default_factory=lambda: DedupJobConfig())
    quality_gate: QualityGateSettings = QualityGateSettings()  # LLM judge + one revision: soulray/gate/
    limit: int | None = Field(None, ge=1, description="read at most this many rewrite units (smoke runs)")

    @model_validator(mode="after")
    def _batch_mode_alone(self) -> RegenerateConfig:
        # batch mode answers the rewrite calls before the stage runs; the persona's profile calls and the
        # gate's judge and revision calls are made online inside the stages, which batch mode does not do
        # yet: they would end as rejects instead of being paid online, so the combination is refused
        if self.rewrite.mode == "batch" and (self.rewrite.persona.enabled or self.quality_gate.enabled):
            raise ValueError("rewrite.mode batch does not yet run rewrite.persona or quality_gate (their calls are "
                             "online only); use rewrite.mode online with them")
        return self


class EvaluateConfig(StrictModel):
    dataset: DatasetName = "soulchat"
    version: str = Field("latest", description="the published version whose held-out dialogues are scored")
    root: str = Field("output", description="the store root (local folder or s3://bucket/prefix)")
    s3: S3Config = S3Config()
    ray: RayConfig = RayConfig()
    models: list[EvalModel] = Field(min_length=1)
    samples: int | None = Field(10_000, ge=1, description="held-out samples (the paper: 10,000); None: all")
    test_set: str | None = Field(None, description="test-set label in the report (default: the dataset)")
    split: EvalSplitConfig = EvalSplitConfig()
    decoding: DecodingConfig = DecodingConfig()
    generation: CheckpointGenerationConfig = CheckpointGenerationConfig()
    api: ApiConfig = ApiConfig()
    judge: JudgeConfig = JudgeConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> EvaluateConfig:
        names = [model.name for model in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: names must be unique, got {names}")
        return self


class FinetuneConfig(StrictModel):
    dataset: DatasetName = "soulchat"
    version: str = Field("latest", description="the published version to train on")
    root: str = Field("output", description="the store root (local folder or s3://bucket/prefix); runs go "
                                            "under <root>/<dataset>/finetune/<run_name>")
    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                                 description="None: a new run; an existing run's name resumes it")
    s3: S3Config = S3Config()
    ray: RayConfig = RayConfig()
    model: FinetuneModelConfig = FinetuneModelConfig()
    samples: FinetuneSamplesConfig = FinetuneSamplesConfig()
    optim: OptimConfig = OptimConfig()
    trainer: FinetuneTrainerConfig = FinetuneTrainerConfig()

    @model_validator(mode="after")
    def _batch_splits_evenly(self) -> FinetuneConfig:
        per_step = self.optim.micro_batch_size * self.trainer.workers
        if self.optim.global_batch_size % per_step:
            raise ValueError(f"optim.global_batch_size {self.optim.global_batch_size} must be a multiple of "
                             f"optim.micro_batch_size × trainer.workers = {per_step}")
        return self


ModelT = TypeVar("ModelT", bound=BaseModel)


def load_config(model: type[ModelT], path: str | Path | None, overrides: list[str] = ()) -> ModelT:
    """Read `path` (YAML), apply `key.path=value` overrides, validate against `model`."""
    origin = str(path) if path else "<defaults>"
    if overrides:
        # keys only: an override's value may be exactly the secret we are about to refuse
        origin += " with --set " + ", ".join(override.partition("=")[0] for override in overrides)
    raw: dict[str, Any] = {}
    if path:
        raw = _read_yaml(Path(path))
    for override in overrides:
        _apply_override(raw, override)
    _refuse_secrets(raw, origin)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None


def named_secrets(config: BaseModel) -> list[tuple[str, str]]:
    """(config key, value) of every secret reference in `config`: fields named `*_env` (an env var's
    name) and `api_key_file` (a file's path), anywhere in the tree."""
    found: list[tuple[str, str]] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, BaseModel):
            for name in type(node).model_fields:
                value, key = getattr(node, name), f"{where}.{name}" if where else name
                if (name.endswith("_env") or name == "api_key_file") and isinstance(value, str):
                    found.append((key, value))
                else:
                    walk(value, key)
        elif isinstance(node, (list, tuple)):
            for index, item in enumerate(node):
                walk(item, f"{where}.{index}")
        elif isinstance(node, dict):
            for key, item in node.items():
                walk(item, f"{where}.{key}")

    walk(config, "")
    return found


def secret_env_names(config: BaseModel) -> list[str]:
    """The names of every env var this config reads a secret from (fields named `*_env`, anywhere)."""
    return sorted({value for key, value in named_secrets(config) if key.endswith("_env")})


# How env vars are conventionally named; a name that is not shaped so may be a pasted key: never shown.
_SHOWABLE_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")


def check_named_secrets(config: BaseModel) -> None:
    """Every secret the config names is there: its env var set and not empty, its file readable and
    not empty. Run on the driver before Ray or any pipeline starts (and the workers check again when
    they resolve the secret). The error names the config key and the variable, never a value."""
    import os

    missing = []
    for key, reference in named_secrets(config):
        if key.endswith("_env"):
            if not os.environ.get(reference):
                shown = reference if _SHOWABLE_ENV_NAME.match(reference) else "(name not shown: it is not shaped " \
                                                                              "like a variable name)"
                missing.append(f"{key}: environment variable {shown} is not set")
        else:
            path = Path(reference).expanduser()
            if not path.is_file() or not os.access(path, os.R_OK) or path.stat().st_size == 0:
                missing.append(f"{key}: {redact(str(path))} is missing, unreadable or empty")
    if missing:
        raise ConfigError("secrets named in the config are not available here (set them on every node, the "
                          "driver's included): " + "; ".join(missing))


def config_hash(config: BaseModel) -> str:
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r}: expected key.path=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node: Any = raw
    parts = key.strip().split(".")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {override!r}: {'.'.join(parts[:index + 1])} is not an index of the list")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif last:
            node[part] = value
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {override!r}: {'.'.join(parts[:index + 1])} is not a section")


def _refuse_secrets(node: Any, origin: str, where: str = "") -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_secrets(value, origin, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _refuse_secrets(value, origin, f"{where}.{index}")
    elif isinstance(node, str) and (kind := find_secret(node)):
        raise ConfigError(
            f"{origin}: {where}: this looks like a secret value ({kind}; the value is not shown). Configs hold "
            "only references: put the secret in an environment variable and give its name (e.g. api_key_env, "
            "access_key_id_env), or in a file (api_key_file); an endpoint takes its key from those, not its URL."
        )


def _describe(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration in {origin}:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<top level>"
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif key.endswith("_env") or key.endswith("_file"):  # a wrong reference may be a pasted secret
            message = f"{error['msg']} (the value is not shown: it may be a secret)"
        else:
            message = f"{error['msg']} (got {_shorten(error.get('input'))})"
        lines.append(f"  {key}: {message}")
    return redact("\n".join(lines))


def _shorten(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
