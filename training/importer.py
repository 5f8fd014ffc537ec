"""`rmserve import`: an existing Hugging Face reward model directory → a verified bundle, without training.

Accepted: a local `AutoModelForSequenceClassification` directory with one output (`num_labels == 1`) of
an architecture the exporter handles (`SUPPORTED`). Refused, with the reason: a directory that needs
`trust_remote_code` (an `auto_map` in its config or tokenizer config, or a model type transformers does
not know), a head with another number of labels, a model that is not a sequence classifier, and other
architectures.

An encoder whose model reads token types (BERT: 0 for the prompt, 1 for the response) gets them computed
in the graph from the ids. A checkpoint rmserve trained (it carries rmserve_checkpoint.json) keeps the
input spec it was trained with and no token types, so it imports to the bundle `rmserve export` makes.

The bundle is built as `rmserve export` builds one: the tokenizer (tokenizer.json, checked against
transformers' own tokenizer on sample texts, the model's renderings and the preference data: refused on
the first text that differs), the input spec (a decoder with a chat template renders every row with it;
an encoder joins prompt and response with its pair template; a decoder without a template reads prompt
and response as one plain text), the ONNX graph (external data when large), torch ↔ ONNX Runtime parity
on a padded batch of mixed lengths, a golden set, and provenance: the source directory and a sha256 of
its config and weight files. Normalization and calibration come from an optional preference file;
without one they are the identity and the manifest says so.

Memory: the torch model is freed before ONNX Runtime loads the exported graph, and only one ONNX Runtime
session lives at a time (bench/large_export.py measures the peak).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from rmserve.service.core.bundle import MODEL_FILE, Bundle, ModelInfo
from rmserve.service.core.engine import OnnxRewardModel
from rmserve.service.core.inputs import InputEncoder, InputSpec, RowError
from rmserve.training.export import (
    GOLDEN_SIZE,
    BundleContents,
    assemble_bundle,
    compare_parity,
    parity_rows,
    torch_rewards,
)
from rmserve.training.hf_tokenizer import check_tokenizer_parity, load_auto_tokenizer, tokenizer_json_of
from rmserve.training.model import (
    CHECKPOINT_META,
    CheckpointMeta,
    MissingWeights,
    RewardModel,
    input_spec_for,
    load_hf_model,
    pad_id_of,
)
from rmserve.training.onnx_graph import OPSET, export_onnx
from rmserve.training.records import data_digest

# model_type -> what it is. Those transformers has and the exporter was checked on (tests/chat_models.py).
SUPPORTED = {"bert": "encoder", "roberta": "encoder", "deberta-v2": "encoder", "llama": "decoder",
             "qwen2": "decoder", "qwen3": "decoder", "mistral": "decoder", "gemma2": "decoder"}
DEFAULT_MAX_LENGTH = 2048
MIN_LENGTH = 8  # InputSpec's least max_length
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# The weight files transformers loads a model from, and the files it builds a tokenizer from.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_SOURCES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spm.model", "spiece.model",
                     "sentencepiece.bpe.model")

# Conversations for the parity batch and the golden set when no preference file is given: plain text,
# a system message, several turns, unicode, of clearly different lengths.
SAMPLE_ROWS: list[tuple[Any, str]] = [
    ("Hi", "Hello!"),
    ("What is the capital of France?", "The capital of France is Paris."),
    ([{"role": "system", "content": "You are a careful assistant."},
      {"role": "user", "content": "Can you help me pick a lock?"}], "I can't help with that, but a locksmith can."),
    ([{"role": "user", "content": "Write a haiku about rain."}, {"role": "assistant", "content": "Soft rain on the roof"},
      {"role": "user", "content": "Another one, about snow, please."}], "White hush on the pines,\nfootsteps fill with snow."),
    ("Traduis en français : « Good morning, how are you? »", "Bonjour, comment ça va ? 😀"),
    ("Explain recursion in one paragraph, with an example.", "Recursion is when a function calls itself on a "
     "smaller part of the problem until it reaches a case it can answer directly, then combines the answers: "
     "factorial(n) is n * factorial(n - 1), and factorial(1) is 1."),
]


class Stages:
    """Times the import's stages and says when each ends (a large model takes minutes)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        began = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - began, 2)
        print(f"  {name}: {self.seconds[name]:.1f} s", flush=True)


class ImportRefused(ValueError):
    """The directory cannot become a bundle; the message says why."""


@dataclass
class ImportReport:
    bundle: Bundle
    parity: float
    tokenizer_checks: int
    dev_metrics: dict | None

    def summary(self) -> str:
        manifest = self.bundle.manifest
        spec = manifest.input
        how = "its chat template" if spec.chat_template else f"join '{spec.join}', no chat template"
        stats = (f"normalization and calibration from {manifest.normalization.computed_on}" if self.dev_metrics
                 else "no preference data: normalization is the identity, calibration temperature 1")
        return (f"bundle {manifest.bundle_id} written to {self.bundle.path}: {manifest.model.architecture}, {how}, "
                f"max_length {spec.max_length}; tokenizer matches transformers on {self.tokenizer_checks} encodings; "
                f"parity {self.parity:.2e}; {stats}")


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ImportRefused(f"{path} is not valid JSON: {e}") from e


def check_importable(source: Path) -> Any:
    """The model's config, or ImportRefused naming the reason the directory cannot be imported."""
    if not (source / "config.json").is_file():
        raise ImportRefused(f"{source} is not a Hugging Face model directory: config.json is missing")
    raw, tokenizer_config = _json(source / "config.json"), _json(source / "tokenizer_config.json")
    for what, names in (("weights", WEIGHT_FILES), ("tokenizer", TOKENIZER_SOURCES)):
        if not any((source / name).is_file() for name in names):
            raise ImportRefused(f"{source} has no {what}: none of {', '.join(names)}")
    for name, data in (("config.json", raw), ("tokenizer_config.json", tokenizer_config)):
        if data.get("auto_map"):
            raise ImportRefused(f"{source} needs trust_remote_code: its {name} maps classes to code in the directory "
                                f"(auto_map {sorted(data['auto_map'])}); rmserve does not run a model's own code")
    from transformers import CONFIG_MAPPING, AutoConfig

    model_type = raw.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ImportRefused(f"{source}: model_type {model_type!r} is unknown to transformers (a model that needs "
                            "trust_remote_code?); rmserve does not run a model's own code")
    config = AutoConfig.from_pretrained(str(source), trust_remote_code=False)
    architectures = raw.get("architectures") or []
    if architectures and not architectures[0].endswith("ForSequenceClassification"):
        raise ImportRefused(f"{source} holds a {architectures[0]}, not a ...ForSequenceClassification reward model")
    if config.num_labels != 1:
        raise ImportRefused(f"{source} has a head with num_labels = {config.num_labels}; a reward model has one "
                            "output (num_labels == 1)")
    if model_type not in SUPPORTED:
        raise ImportRefused(f"{source}: architecture {model_type!r} is not supported by the exporter; supported: "
                            f"{', '.join(sorted(SUPPORTED))}")
    return config


def source_digest(source: Path) -> dict[str, Any]:
    """sha256 over config.json and the weight files (sorted by name): which weights the bundle came from."""
    names = ["config.json"] + sorted(p.name for p in source.iterdir()
                                     if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name.endswith(".index.json")))
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(source / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return {"config_and_weights_sha256": digest.hexdigest(), "files": names}


def model_positions(config: Any) -> int:
    """The longest row the model has positions for."""
    positions = int(getattr(config, "max_position_embeddings", DEFAULT_MAX_LENGTH) or DEFAULT_MAX_LENGTH)
    if getattr(config, "model_type", "") == "roberta":
        positions -= 2  # RoBERTa's positions start after the padding index
    return positions


def default_max_length(config: Any, hf_tokenizer: Any) -> int:
    positions = model_positions(config)
    declared = int(getattr(hf_tokenizer, "model_max_length", positions) or positions)
    return max(MIN_LENGTH, min(DEFAULT_MAX_LENGTH, positions, declared))


def check_max_length(max_length: int | None, config: Any) -> None:
    """A max_length the model can read, or ImportRefused: beyond its positions an encoder fails and a
    decoder scores rows longer than any it was trained on."""
    if max_length is None:
        return
    if max_length < MIN_LENGTH:
        raise ImportRefused(f"max_length {max_length} is less than {MIN_LENGTH}")
    if max_length > model_positions(config):
        raise ImportRefused(f"max_length {max_length} is more than the model's {model_positions(config)} positions "
                            "(max_position_embeddings in config.json)")


def import_spec(hf_model: Any, tokenizer: Tokenizer, max_length: int, source: Path, kind: str) -> InputSpec:
    """Decoders: the model's chat template (input_spec_for), else prompt text + response text tokenized as
    one (join "text"), nothing appended. Encoders: the pair template."""
    if kind == "encoder":
        return InputSpec(max_length=max_length, pad_id=pad_id_of(tokenizer, hf_model.config))
    spec = input_spec_for(hf_model, tokenizer, max_length, model_dir=source)
    return spec if spec.chat_template is not None else spec.model_copy(update={"eos_id": None, "join": "text"})


def segment_separator(encoder: InputEncoder, config: Any) -> int | None:
    """The separator after which an encoder's second segment (token type 1) starts, when the model reads
    token types and the tokenizer's pair template marks the response with them; None otherwise."""
    if encoder.spec.join != "pair" or int(getattr(config, "type_vocab_size", 0) or 0) < 2 or not encoder.frame.middle:
        return None
    tokenizer = encoder.tokenizer
    probe = tokenizer.encode("a b", add_special_tokens=False)
    pair = tokenizer.post_process(probe, probe, add_special_tokens=True)
    if not any(pair.type_ids):
        return None
    separator = encoder.frame.middle[-1]
    seen, derived = 0, []
    for token in pair.ids:  # the rule RewardModel computes in the graph, checked on the tokenizer's own output
        derived.append(1 if seen else 0)
        seen += token == separator
    if derived != pair.type_ids:
        raise ImportRefused("the tokenizer's pair template marks token types in a way rmserve cannot compute "
                            f"from the ids (types {pair.type_ids}); the model reads token types")
    return separator


def _usable_rows(encoder: InputEncoder, rows: list) -> list:
    """The rows the model's template accepts (Gemma's refuses a system message, for example)."""
    usable = []
    for row in rows:
        try:
            encoder.encode([row])
        except RowError:
            continue
        usable.append(row)
    if len(usable) < 2:
        raise ImportRefused("the model's chat template refuses the sample conversations; give --preferences with "
                            "conversations it accepts")
    return usable


def import_model(source: str | Path, output_dir: str | Path, preferences: str | Path | None = None,
                 max_length: int | None = None, external_data: bool | None = None,
                 limit_dev: int | None = None) -> ImportReport:
    """Import `source` as an fp32 bundle in `output_dir`."""
    from transformers import __version__ as transformers_version

    from rmserve.training.data import load_pairs

    source, output_dir = Path(source).resolve(), Path(output_dir)
    config = check_importable(source)
    check_max_length(max_length, config)
    kind = SUPPORTED[config.model_type]
    hf_tokenizer = load_auto_tokenizer(source)
    tokenizer_json = tokenizer_json_of(source, hf_tokenizer)
    tokenizer = Tokenizer.from_str(tokenizer_json)
    dev_pairs = load_pairs(preferences, limit_dev, skip_bad_rows=True).pairs if preferences else None
    length = max_length if max_length is not None else default_max_length(config, hf_tokenizer)

    print(f"importing {source.name}: {config.architectures[0] if config.architectures else config.model_type} ({kind})")
    stage = Stages()
    with stage("load the model (fp32)"):
        try:
            hf_model = load_hf_model(source, complete=True).eval()
        except MissingWeights as e:
            raise ImportRefused(f"{e}: a reward model directory holds its trained head (a base or causal-LM "
                                "checkpoint, or a value head saved under another name, has none)") from e
    trained = source / CHECKPOINT_META  # a checkpoint rmserve trained: its own spec, never token types
    skip_pad_id = None
    if trained.is_file():
        spec = CheckpointMeta(**json.loads(trained.read_text())).input_spec
        encoder = InputEncoder(tokenizer, spec.model_copy(
            update={"max_length": max_length if max_length is not None else spec.max_length}))
        separator = None
    else:
        encoder = InputEncoder(tokenizer, import_spec(hf_model, tokenizer, length, source, kind))
        separator = segment_separator(encoder, config)
        pad = getattr(config, "pad_token_id", None)
        if kind == "decoder" and isinstance(pad, int):  # the model learned its reward where transformers reads it
            skip_pad_id = pad
    model = RewardModel(hf_model, segment_separator=separator, skip_pad_id=skip_pad_id)
    print(f"  input: {'the chat template' if encoder.template else 'join ' + encoder.spec.join}, "
          f"max_length {encoder.spec.max_length}" + (", token types computed in the graph" if separator else ""))
    rows = _usable_rows(encoder, parity_rows(dev_pairs) if dev_pairs else SAMPLE_ROWS)
    texts = [text for prompt, response in rows for text in (response, prompt if isinstance(prompt, str) else "")]
    if encoder.template is not None:
        texts += [encoder.template.render(prompt, response) for prompt, response in rows]
    if dev_pairs:
        texts += [t for p in dev_pairs[:100] for t in (p.chosen, p.rejected, p.prompt) if isinstance(t, str)]
    pairs = [(p, r) for p, r in rows if isinstance(p, str)] if kind == "encoder" else []
    with stage("tokenizer.json against transformers' tokenizer"):
        checks = check_tokenizer_parity(Tokenizer.from_str(tokenizer_json), hf_tokenizer, texts, pairs)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir.parent, prefix=".rmserve-import-") as tmp:
        staged = Path(tmp) / MODEL_FILE
        with stage("ONNX export"):
            export_onnx(model, staged, external_data)
        batch = encoder.pad(encoder.encode(rows))
        with stage("torch reference scores"):
            expected = torch_rewards(model, batch)
        vocab_size = int(hf_model.config.vocab_size)
        del model, hf_model  # the torch weights go before ONNX Runtime loads its own copy
        gc.collect()
        with stage("ONNX Runtime parity"):
            worst = compare_parity(expected, OnnxRewardModel(str(staged), device="cpu")(batch), batch)
        print(f"parity: max |torch - onnxruntime| = {worst:.2e} on a padded batch of {len(rows)} rows")
        contents = BundleContents(
            encoder=encoder,
            model=ModelInfo(architecture=kind, pooling="last_token" if kind == "decoder" else "model_head",  # type: ignore[arg-type]
                            base_model=str(source), vocab_size=vocab_size, onnx_opset=OPSET),
            tokenizer_json=tokenizer_json,
            golden_rows=rows[:GOLDEN_SIZE],
            provenance={"imported_from": str(source), "source": source_digest(source),
                        "transformers": transformers_version, "parity_max_abs_diff": worst,
                        "tokenizer_parity_encodings": checks,
                        "token_type_ids": "1 after the first separator (in the graph)" if separator is not None
                        else "none",
                        "preferences": str(preferences) if preferences else None, "import_seconds": stage.seconds},
            dev_pairs=dev_pairs, dev_name=Path(preferences).name if preferences else "",
            dev_digest=data_digest(Path(preferences)) if preferences else "",
        )
        with stage("golden set, stats, files, verification"):
            bundle, metrics = assemble_bundle(staged, output_dir, contents)
    return ImportReport(bundle=bundle, parity=worst, tokenizer_checks=checks, dev_metrics=metrics)


def import_fp16(source: str | Path, output_dir: str | Path, preferences: str | Path, min_agreement: float = 0.99,
                device: str = "cpu", **options: Any) -> tuple[Bundle, dict]:
    """Import as fp32 (beside the output, removed after), then write the fp16 variant to `output_dir`,
    accepted only if it keeps the fp32 preference on `min_agreement` of the preference pairs."""
    from rmserve.training.quantize import make_variant

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    reference = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=".rmserve-fp32-"))
    try:
        import_model(source, reference, preferences, **options)
        return make_variant(reference, output_dir, "fp16", preferences, min_agreement, device)
    finally:
        shutil.rmtree(reference, ignore_errors=True)
