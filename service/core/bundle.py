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

Format versions: 1 is every bundle without a chat template, external data or join "text" (all bundles
written before those existed, and the default MiniLM bundle still); a bundle that has any is written as
version 2, so that an older rmserve, which would ignore the template or leave the external data
unverified, refuses it with its version message; a process reward model's bundle is version 3, which no older rmserve reads.
This rmserve reads all three.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
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

from rmserve.service.core.bundle_files import (
    MAX_MANIFEST_BYTES,
    MAX_TOKENIZER_BYTES,
    BundleDirectory,
    PinnedModel,
    UnsafeFile,
    sha256_bytes,
    sha256_fd,
)
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
MAX_GOLDEN_EXAMPLES = 256


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
    version: str = Field("none", description=(
        "Identifies these stats: the reference set (a digest of its file and the count of rewards) and a digest of "
        "mean and std, so that two models scored on the same set never share a version; a quantized bundle appends "
        "its precision. Bundles exported before 2026-11-30 name the reference set only."))

    @classmethod
    def over(cls, rewards: Any, reference: str, reference_digest: str, pairs: int) -> Normalization:
        """The stats of the chosen and rejected `rewards` (a float array) of `pairs` preference pairs from the
        reference file `reference`, whose contents digest to `reference_digest`."""
        mean, std = float(rewards.mean()), float(max(rewards.std(), 1e-6))
        stats = hashlib.sha256(f"{mean!r} {std!r}".encode()).hexdigest()[:8]
        return cls(mean=mean, std=std, computed_on=f"{reference}: chosen+rejected of {pairs} pairs",
                   version=f"{reference_digest}-{len(rewards)}-{stats}")


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
    golden: list[GoldenExample] = Field(default_factory=list, max_length=MAX_GOLDEN_EXAMPLES,
                                        description="Scored one at a time at every load: kept small.")
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
    tokenizer_json: str | None = field(default=None, repr=False)  # the verified tokenizer.json, as read
    pinned: PinnedModel | None = field(default=None, repr=False)  # load_bundle(pin_model=True): what to load

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE

    def tokenizer(self) -> Tokenizer:
        """The tokenizer, made from the bytes that were verified (never read from disk again)."""
        if self.tokenizer_json is not None:
            return Tokenizer.from_str(self.tokenizer_json)
        return Tokenizer.from_file(str(self.tokenizer_path))

    def encoder(self) -> InputEncoder:
        return InputEncoder(self.tokenizer(), self.manifest.input)

    def golden_rows(self) -> list[tuple[Prompt, str]]:
        return [(g.prompt, g.response) for g in self.manifest.golden]  # type: ignore[misc]


# An absolute, home-relative or ./-relative path, or one of two or more components (a hub model id has one
# slash: "org/name"); only provenance and base_model hold paths.
_PATH = re.compile(r"^(/|~|\.{1,2}[/\\]|[A-Za-z]:[/\\])|[/\\][^/\\]+[/\\]")


def _hide_paths(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _hide_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_hide_paths(item) for item in value]
    return "(path hidden)" if isinstance(value, str) and _PATH.search(value) else value


def public_manifest(manifest: Manifest, expose_paths: bool = False) -> dict[str, Any]:
    """The manifest as clients see it (/v1/model, GetModelInfo): without the filesystem paths that
    provenance and base_model record (where the model was trained, its data), unless `expose_paths`."""
    data = manifest.model_dump(mode="json")
    if not expose_paths:
        data["provenance"] = _hide_paths(data["provenance"])
        data["model"]["base_model"] = _hide_paths(data["model"]["base_model"])
    return data


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
    newer_input = manifest.input.chat_template is not None or manifest.input.join == "text"
    version = 3 if manifest.steps is not None else 2 if external or newer_input else 1
    manifest = manifest.model_copy(update={"files": files, "format_version": version})
    (directory / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


def _outside(tensor: str, location: str) -> BundleError:
    return BundleError(f"external data outside the bundle: {MODEL_FILE} stores tensor {tensor!r} in {location!r}, "
                       "which is not a file inside the bundle directory; a bundle's files must all be inside it")


def load_bundle(path: str | Path, verify_hashes: bool = True, pin_model: bool = False,
                within: Path | None = None) -> Bundle:
    """Read and verify a bundle directory; raise BundleError naming the first failed check (files are named
    relative to the bundle, so that the message can go to a client). Every file is read once, from inside
    the directory and never through a link (bundle_files.py); tokenizer.json is kept as it was verified.
    `pin_model`: keep model.onnx's verified bytes and its external data pinned for the engine to load
    (`Bundle.pinned`). `within`: the directory must lie inside it (the reload endpoint's bundle_root)."""
    try:
        directory = BundleDirectory(Path(path), within)
    except (FileNotFoundError, NotADirectoryError):
        raise BundleError("bundle directory does not exist") from None
    except UnsafeFile as e:
        raise BundleError(str(e)) from None
    pinned = None
    try:
        manifest = _read_manifest(directory)
        pinned, external = _verify_model(directory, manifest, verify_hashes, pin_model)
        tokenizer_json = _read(directory, TOKENIZER_FILE, MAX_TOKENIZER_BYTES, "tokenizer.json")
        _check_hash(manifest, TOKENIZER_FILE, sha256_bytes(tokenizer_json), verify_hashes)
        for tensor, location in external:
            _verify_external(directory, manifest, tensor, location, verify_hashes, pinned)
        for name in manifest.files:
            if name not in (MODEL_FILE, TOKENIZER_FILE) and name not in {loc for _, loc in external}:
                _verify_other(directory, manifest, name, verify_hashes)
        text = tokenizer_json.decode("utf-8", errors="strict")
        _check_tokenizer(text, manifest)
    except BaseException:
        if pinned is not None:
            pinned.release()
        raise
    finally:
        directory.close()
    return Bundle(path=Path(path), manifest=manifest, tokenizer_json=text, pinned=pinned)


def _read(directory: BundleDirectory, name: str, limit: int | None, what: str) -> bytes:
    try:
        return directory.read(name, limit, what)
    except FileNotFoundError:
        raise BundleError(f"missing file: {name}" + (" (not a bundle; build one with `rmserve export`)"
                                                      if name == MANIFEST else "")) from None
    except UnsafeFile as e:
        raise BundleError(str(e)) from None


def _read_manifest(directory: BundleDirectory) -> Manifest:
    try:
        raw = json.loads(_read(directory, MANIFEST, MAX_MANIFEST_BYTES, "the manifest"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{MANIFEST} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise BundleError(f"{MANIFEST} must hold a JSON object")
    version = raw.get("format_version")
    if version not in READABLE_VERSIONS:
        raise BundleError(
            f"wrong format version: {MANIFEST} has format_version {version!r}, "
            f"this rmserve reads versions {', '.join(map(str, READABLE_VERSIONS))}; re-export the bundle with this version"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"invalid manifest {MANIFEST}: field '{where}': {first['msg']}") from e


def _check_hash(manifest: Manifest, name: str, actual: str, verify: bool) -> None:
    expected = manifest.files.get(name)
    if expected is None:
        raise BundleError(f"manifest {MANIFEST} lists no sha256 for {name}")
    if verify and actual != expected:
        raise BundleError(f"bad hash: {name} has sha256 {actual[:16]}…, manifest expects {expected[:16]}… "
                          "(file changed after export)")


def _verify_model(directory: BundleDirectory, manifest: Manifest, verify: bool,
                  pin: bool) -> tuple[PinnedModel | None, list[tuple[str, str]]]:
    """model.onnx first: a changed graph is reported as such before its external-data locations are read."""
    data = _read(directory, MODEL_FILE, None, MODEL_FILE)
    _check_hash(manifest, MODEL_FILE, sha256_bytes(data) if verify else "", verify)
    try:
        located = external_locations(data, MODEL_FILE)
    except OnnxFileError as e:
        raise BundleError(str(e)) from e
    external: list[tuple[str, str]] = []
    for tensor, location in located:
        parts = PurePosixPath(location).parts
        if not parts or Path(location).is_absolute() or ".." in parts:
            raise _outside(tensor, location)
        if location not in {loc for _, loc in external}:
            external.append((tensor, location))
    return (PinnedModel(data) if pin else None), external


def _verify_external(directory: BundleDirectory, manifest: Manifest, tensor: str, location: str, verify: bool,
                     pinned: PinnedModel | None) -> None:
    try:
        fd = directory.open(location)
    except FileNotFoundError:
        raise BundleError(f"missing file: {location} (external data of {MODEL_FILE})") from None
    except UnsafeFile:
        raise _outside(tensor, location) from None
    if pinned is None:
        try:
            _check_hash(manifest, location, sha256_fd(fd) if verify else "", verify)
        finally:
            os.close(fd)
        return
    pinned.pin(location, fd)  # closed by pinned.release()
    _check_hash(manifest, location, sha256_bytes(pinned.external[location]) if verify else "", verify)


def _verify_other(directory: BundleDirectory, manifest: Manifest, name: str, verify: bool) -> None:
    try:
        fd = directory.open(name)
    except FileNotFoundError:
        raise BundleError(f"missing file: {name}") from None
    except UnsafeFile as e:
        raise BundleError(f"manifest {MANIFEST} lists {name!r}: {e}") from None
    try:
        _check_hash(manifest, name, sha256_fd(fd) if verify else "", verify)
    finally:
        os.close(fd)


def _check_tokenizer(text: str, manifest: Manifest) -> None:
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
        raise BundleError(f"cannot read {TOKENIZER_FILE}: {e}") from e
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
        raise BundleError(f"invalid manifest {MANIFEST}: a process reward model needs both 'steps' and "
                          "the input spec's step_separator, an outcome reward model neither")
    try:  # the spec must work with this tokenizer: special tokens found, chat template compiles
        InputEncoder(tokenizer, manifest.input)
    except ValueError as e:
        raise BundleError(f"invalid input spec in {MANIFEST}: {e}") from e
