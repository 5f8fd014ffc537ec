"""The bundle: the one contract between training and serving.

A bundle is a directory with `model.onnx` (inputs `input_ids`, `attention_mask`, int64 [batch, seq];
output `reward`, float32 [batch]), `tokenizer.json` and `bundle.json`, the manifest defined here, plus the
external-data file(s) model.onnx names when its weights do not fit in one protobuf (over 2 GB). The
manifest carries everything scoring needs to reproduce training exactly (the `InputSpec`, with the model's
chat template when it has one), the normalization and calibration constants, sha256 of every file,
provenance and a golden set of inputs with their expected scores. `training/` writes bundles with
`write_manifest`; `service/` reads them with `load_bundle`, which verifies them and raises one
`BundleError` per kind of failure: among them a file whose hash changed, named, and an external-data
location outside the bundle directory.

A process reward model's bundle (`Manifest.steps` set) has a graph that returns one score per position
(`token_scores`, float32 [batch, sequence]) instead of `reward`, read at the step separator its input spec
names (service/core/step_scores.py); its golden examples record the step scores.

Format versions: 1 is every bundle without a chat template or external data (all bundles written before
those existed, and the default MiniLM bundle still); a bundle that has either is written as version 2, so
that an older rmserve, which would ignore the template or leave the external data unverified, refuses it
with its version message; a process reward model's bundle is version 3, which no older rmserve reads.
This rmserve reads all three.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)
from tokenizers import Tokenizer

from rmserve.service.core.inputs import InputEncoder, InputSpec, Prompt
from rmserve.service.core.onnx_files import OnnxFileError, external_locations
from rmserve.service.core.step_scores import StepRewards

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "bundle.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
# A golden score must be reproduced this closely by the serving engine, or the bundle is refused.
GOLDEN_TOLERANCE = 1e-3


class BundleError(Exception):
    """A bundle that cannot be served; the message says which check failed and how to fix it."""


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    architecture: Literal["encoder", "decoder"] = "encoder"
    base_model: str = Field(description="Where the weights started from (path or name).")
    vocab_size: int = Field(ge=1, description="Rows of the model's token embedding.")
    pooling: Literal["model_head", "last_token"] = "model_head"
    onnx_opset: int
    precision: Literal["fp32", "fp16", "int8"] = "fp32"


class Normalization(BaseModel):
    """normalized = (raw - mean) / std, with stats from the reference set named here."""

    model_config = ConfigDict(extra="forbid")
    mean: float = 0.0
    std: float = Field(1.0, gt=0.0)
    computed_on: str = "none"
    version: str = Field("none", description="Identifies these stats: sha of the reference set + count.")


class Calibration(BaseModel):
    """P(a preferred over b) = sigmoid((r_a - r_b) / temperature)."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(1.0, gt=0.0)
    fitted_on: str = "none"


class GoldenExample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str | list[dict[str, str]]
    response: str
    score: float
    step_scores: list[float] | None = Field(None, description="A PRM bundle: the scores at the row's step separators.")

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        if data.get("step_scores", 0) is None:
            del data["step_scores"]
        return data


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    format_version: int = FORMAT_VERSION
    bundle_id: str
    created_at: str = Field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    input: InputSpec
    model: ModelInfo
    normalization: Normalization = Field(default_factory=Normalization)
    calibration: Calibration = Field(default_factory=Calibration)
    files: dict[str, str] = Field(default_factory=dict, description="sha256 of every file, by name.")
    provenance: dict[str, Any] = Field(default_factory=dict)
    golden: list[GoldenExample] = Field(default_factory=list)
    steps: StepRewards | None = Field(None, description="Set for a process reward model: how step rewards are read.")

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)  # an outcome bundle's manifest is written exactly as before
        if data.get("steps", 0) is None:
            del data["steps"]
        return data

    @property
    def model_sha256(self) -> str:
        return self.files.get(MODEL_FILE, "")


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE

    def encoder(self) -> InputEncoder:
        return InputEncoder(Tokenizer.from_file(str(self.tokenizer_path)), self.manifest.input)

    def golden_rows(self) -> list[tuple[Prompt, str]]:
        return [(g.prompt, g.response) for g in self.manifest.golden]  # type: ignore[misc]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def external_data_files(directory: Path) -> list[str]:
    """The external-data files model.onnx names, each checked to lie inside `directory`."""
    directory = Path(directory)
    try:
        located = external_locations(directory / MODEL_FILE)
    except OnnxFileError as e:
        raise BundleError(str(e)) from e
    root = directory.resolve()
    names: list[str] = []
    for tensor, location in located:
        target = (directory / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(root):
            raise BundleError(
                f"external data outside the bundle: {MODEL_FILE} stores tensor {tensor!r} in {location!r}, "
                f"which resolves to {target}, outside {root}; a bundle's files must all be inside it"
            )
        if location not in names:
            names.append(location)
    return names


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Hash the bundle's files (external data included), then write bundle.json; returns the manifest as written."""
    directory = Path(directory)
    for name in (MODEL_FILE, TOKENIZER_FILE):
        if not (directory / name).is_file():
            raise BundleError(f"cannot write bundle {directory}: {name} is missing")
    external = external_data_files(directory)
    for name in external:
        if not (directory / name).is_file():
            raise BundleError(f"cannot write bundle {directory}: {MODEL_FILE} names external data {name}, which is missing")
    files = {name: sha256_file(directory / name) for name in (MODEL_FILE, TOKENIZER_FILE, *external)}
    version = 3 if manifest.steps is not None else 2 if external or manifest.input.chat_template is not None else 1
    manifest = manifest.model_copy(update={"files": files, "format_version": version})
    (directory / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def load_bundle(path: str | Path, verify_hashes: bool = True) -> Bundle:
    """Read and verify a bundle directory; raise BundleError naming the first failed check."""
    directory = Path(path)
    if not directory.is_dir():
        raise BundleError(f"bundle directory {directory} does not exist")
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"missing file: {manifest_path} (not a bundle; build one with `rmserve export`)")
    try:
        raw = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{manifest_path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise BundleError(f"{manifest_path} must hold a JSON object")
    version = raw.get("format_version")
    if version not in READABLE_VERSIONS:
        raise BundleError(
            f"wrong format version: {manifest_path} has format_version {version!r}, "
            f"this rmserve reads versions {', '.join(map(str, READABLE_VERSIONS))}; re-export the bundle with this version"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"invalid manifest {manifest_path}: field '{field}': {first['msg']}") from e

    def verify(name: str) -> None:
        file_path = directory / name
        if not file_path.resolve().is_relative_to(directory.resolve()):
            raise BundleError(f"manifest {manifest_path} lists {name!r}, a file outside the bundle directory")
        if not file_path.is_file():
            raise BundleError(f"missing file: {file_path}")
        expected = manifest.files.get(name)
        if expected is None:
            raise BundleError(f"manifest {manifest_path} lists no sha256 for {name}")
        if verify_hashes:
            actual = sha256_file(file_path)
            if actual != expected:
                raise BundleError(
                    f"bad hash: {file_path} has sha256 {actual[:16]}…, manifest expects {expected[:16]}… "
                    "(file changed after export)"
                )

    # model.onnx first: a changed graph is reported as such before its external-data locations are read.
    verify(MODEL_FILE)
    verify(TOKENIZER_FILE)
    for name in dict.fromkeys([*external_data_files(directory), *manifest.files]):
        if name not in (MODEL_FILE, TOKENIZER_FILE):
            verify(name)

    try:
        tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        raise BundleError(f"cannot read {directory / TOKENIZER_FILE}: {e}") from e
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab > manifest.model.vocab_size:
        raise BundleError(
            f"tokenizer/model mismatch: tokenizer.json has {vocab} tokens but the model embeds "
            f"{manifest.model.vocab_size}; the tokenizer does not belong to this model"
        )
    for name in ("pad_id", "eos_id", "step_separator_id"):
        token_id = getattr(manifest.input, name)
        if token_id is not None and token_id >= manifest.model.vocab_size:
            raise BundleError(
                f"tokenizer/model mismatch: {name} {token_id} is outside the model's "
                f"{manifest.model.vocab_size}-token vocabulary"
            )
    if (manifest.steps is None) != (manifest.input.step_separator is None):
        raise BundleError(f"invalid manifest {manifest_path}: a process reward model needs both 'steps' and "
                          "the input spec's step_separator, an outcome reward model neither")
    try:  # the spec must work with this tokenizer: special tokens found, chat template compiles
        InputEncoder(tokenizer, manifest.input)
    except ValueError as e:
        raise BundleError(f"invalid input spec in {manifest_path}: {e}") from e
    return Bundle(path=directory, manifest=manifest)
