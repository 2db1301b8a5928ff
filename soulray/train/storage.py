"""Where a fine-tuning run keeps its files, and how Ray Train reaches them (local folder or s3://).

    <root>/<dataset>/finetune/<run>/prepared/   tokenizer + initial model, samples, split (written first)
    <root>/<dataset>/finetune/<run>/train/      Ray Train's run folder: checkpoint_* (model, optimizer,
                                                step, data position)
    <root>/<dataset>/finetune/<run>/model/      the exported Hugging Face model, split.json, training.json

Ray Train pickles the storage filesystem into its controller and workers. A pyarrow S3FileSystem carries
its credentials when pickled, so S3 storage goes through `DeferredS3FileSystem`: it pickles as the
S3Config (env-var names only) and each process builds the real filesystem from its own environment,
the way soulray.fs does everywhere else.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from soulray.fs import S3Config, resolve, s3_filesystem
from soulray.settings import DATASET_NAME, VERSION_NAME
from soulray.store.versions import check_name


@dataclass(frozen=True)
class RunPaths:
    run_uri: str

    @classmethod
    def for_run(cls, *, root: str, dataset: str, run_name: str) -> RunPaths:
        """Names become path segments (an evaluate checkpoint `finetune:<run>` is free text): checked."""
        check_name("dataset", dataset, DATASET_NAME)
        check_name("fine-tuning run", run_name, VERSION_NAME)
        return cls(f"{root.rstrip('/')}/{dataset}/finetune/{run_name}")

    @property
    def prepared(self) -> str:
        return f"{self.run_uri}/prepared"

    @property
    def model(self) -> str:
        return f"{self.run_uri}/model"

    @property
    def train_name(self) -> str:
        return "train"


class DeferredS3Handler(pafs.FileSystemHandler):
    """Every call goes to soulray.fs.s3_filesystem(s3), built on first use in the calling process."""

    def __init__(self, s3: S3Config) -> None:
        self.s3 = s3

    def __reduce__(self):
        return DeferredS3Handler, (self.s3,)

    @property
    def _fs(self) -> pafs.S3FileSystem:
        return s3_filesystem(self.s3)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeferredS3Handler) and other.s3 == self.s3

    def __hash__(self) -> int:
        return hash(self.s3)

    def get_type_name(self) -> str:
        return "soulray-s3"

    def normalize_path(self, path: str) -> str:
        return self._fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self._fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of a whole S3 account")

    def delete_file(self, path: str) -> None:
        self._fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self._fs.copy_file(src, dest)

    def open_input_stream(self, path: str):
        return self._fs.open_input_stream(path)

    def open_input_file(self, path: str):
        return self._fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: dict[str, str] | None = None):
        return self._fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: dict[str, str] | None = None):
        return self._fs.open_append_stream(path, metadata=metadata)


def ray_storage(run_uri: str, s3: S3Config) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for ray.train.RunConfig."""
    location = resolve(run_uri, s3)
    if location.is_s3:
        return location.path, pafs.PyFileSystem(DeferredS3Handler(s3))
    return location.path, None


def exists(uri: str, s3: S3Config) -> bool:
    location = resolve(uri, s3)
    return location.filesystem.get_file_info(location.path).type != pafs.FileType.NotFound


def read_bytes(uri: str, s3: S3Config) -> bytes:
    location = resolve(uri, s3)
    with location.filesystem.open_input_stream(location.path) as handle:
        return handle.read()


def read_json(uri: str, s3: S3Config) -> Any:
    return json.loads(read_bytes(uri, s3))


def write_json(uri: str, value: Any, s3: S3Config) -> None:
    location = resolve(uri, s3)
    if not location.is_s3:
        Path(location.path).parent.mkdir(parents=True, exist_ok=True)
    with location.filesystem.open_output_stream(location.path) as handle:
        handle.write(json.dumps(value, ensure_ascii=False, indent=2).encode())


def upload_dir(local: str | Path, uri: str, s3: S3Config) -> None:
    """Copy a local folder's files to `uri` (created as needed)."""
    location = resolve(uri, s3)
    if not location.is_s3:
        shutil.copytree(local, location.path, dirs_exist_ok=True)
        return
    # pyarrow's threaded uploads to S3 are unsafe (apache/arrow#32372, as Ray Train notes)
    pafs.copy_files(str(local), location.path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=location.filesystem, use_threads=False)


@contextmanager
def local_dir(uri: str, s3: S3Config) -> Iterator[Path]:
    """A local folder with the files at `uri`: the folder itself when local, else a temporary copy."""
    location = resolve(uri, s3)
    if not location.is_s3:
        yield Path(location.path)
        return
    with tempfile.TemporaryDirectory(prefix="soulray-") as scratch:
        pafs.copy_files(location.path, scratch, source_filesystem=location.filesystem,
                        destination_filesystem=pafs.LocalFileSystem())
        yield Path(scratch)
