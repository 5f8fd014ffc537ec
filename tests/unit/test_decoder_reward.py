"""Decoder reward models (Llama, Qwen2): input spec, last-token pooling under padding, training, export.

Every model here is a tiny randomly initialised decoder whose config has no pad token and whose pad id
ends up equal to EOS, which ends every row: scoring must find the last real token from the attention
mask, and count positions from it, or padded rows would score differently from the same rows alone.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rmserve.service.core.engine import OnnxRewardModel  # noqa: E402
from rmserve.service.core.inputs import InputEncoder, InputSpec  # noqa: E402
from rmserve.training.config import TrainConfig  # noqa: E402
from rmserve.training.export import PARITY_TOLERANCE, export_bundle  # noqa: E402
from rmserve.training.model import RewardModel, input_spec_for, load_checkpoint, load_hf_model  # noqa: E402
from rmserve.training.train import train  # noqa: E402
from tests.conftest import build_tiny_tokenizer  # noqa: E402
from tests.tiny_decoders import ARCHITECTURES, EOS, MIXED_ROWS, make_tiny_decoder, write_pairs  # noqa: E402


@pytest.fixture(scope="module", params=ARCHITECTURES)
def trained(request, tmp_path_factory):
    """(architecture, base dir, checkpoint dir, bundle) after 3 training steps and an export."""
    root = tmp_path_factory.mktemp(f"decoder-{request.param}")
    base = make_tiny_decoder(root / "base", request.param)
    data = write_pairs(root / "pairs.jsonl")
    metrics = train(TrainConfig(
        output_dir=str(root / "ckpt"), base_model=str(base), train_data=str(data), dev_data=str(data),
        max_length=48, batch_size=4, max_steps=3, learning_rate=1e-2, warmup_ratio=0.0, progress=False,
        tensorboard=False,
    ))
    assert metrics["train_steps"] == 3
    bundle = export_bundle(root / "ckpt", root / "bundle", dev_data=str(data))
    return request.param, base, root / "ckpt", bundle


def _scores(model: RewardModel, encoder: InputEncoder, rows) -> tuple[np.ndarray, np.ndarray]:
    """Torch scores of `rows` padded into one batch, and of each row alone."""
    batch = encoder.pad(encoder.encode(rows))
    with torch.no_grad():
        together = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).numpy()
        alone = []
        for row in rows:
            single = encoder.pad(encoder.encode([row]))
            alone.append(model(torch.from_numpy(single.input_ids), torch.from_numpy(single.attention_mask)).item())
    return together, np.array(alone, dtype=np.float32)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_decoder_spec_joins_as_one_sequence_ends_with_eos_and_pads_with_eos(tmp_path, architecture):
    from tokenizers import Tokenizer

    base = make_tiny_decoder(tmp_path / "base", architecture)
    hf_model = load_hf_model(base)
    tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
    eos = tokenizer.token_to_id(EOS)
    assert RewardModel(hf_model).is_decoder
    spec = input_spec_for(hf_model, tokenizer, 32)
    assert (spec.join, spec.pad_id, spec.eos_id, spec.max_length) == ("concat", eos, eos, 32)
    assert hf_model.config.pad_token_id == eos  # set explicitly, so the saved checkpoint carries it
    [row] = InputEncoder(tokenizer, spec).encode([("hello there", "i am fine")])
    words = tokenizer.decode(row.ids, skip_special_tokens=False).split()
    assert words == (["<s>"] if architecture == "llama" else []) + ["hello", "there", "i", "am", "fine", EOS]

    # A tokenizer whose template already ends rows with EOS gets no second one.
    from tokenizers import processors

    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, eos)])
    assert input_spec_for(hf_model, tokenizer, 32).eos_id is None


def test_encoder_spec_is_unchanged(tmp_path):
    tokenizer = build_tiny_tokenizer()
    config = transformers.BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, num_labels=1, pad_token_id=0)
    hf_model = transformers.BertForSequenceClassification(config).eval()
    model = RewardModel(hf_model)
    assert not model.is_decoder
    spec = input_spec_for(hf_model, tokenizer, 32)
    assert spec == InputSpec(max_length=32, pad_id=0) and spec.join == "pair" and spec.eos_id is None
    # An encoder bundle's manifest is byte-for-byte what it was before eos_id existed.
    assert "eos_id" not in spec.model_dump_json() and "eos_id" not in json.dumps(spec.model_dump())
    batch = InputEncoder(tokenizer, spec).pad(InputEncoder(tokenizer, spec).encode(MIXED_ROWS))
    ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
    with torch.no_grad():
        assert torch.equal(model(ids, mask), hf_model(input_ids=ids, attention_mask=mask).logits[:, 0])


def test_eos_is_kept_when_the_row_is_truncated():
    from tests.tiny_decoders import build_decoder_tokenizer

    tokenizer = build_decoder_tokenizer("llama")
    eos = tokenizer.token_to_id(EOS)
    encoder = InputEncoder(tokenizer, InputSpec(max_length=8, join="concat", pad_id=eos, eos_id=eos))
    [row] = encoder.encode([("hello there how are you", "one two three four five six seven eight")])
    words = tokenizer.decode(row.ids, skip_special_tokens=False).split()
    # BOS, then the end of the response (cut from the left: the prompt went first), then EOS.
    assert words == ["<s>", "three", "four", "five", "six", "seven", "eight", EOS]
    assert len(row.ids) == 8 and row.prompt_tokens_cut == 5 and row.response_tokens_cut == 2


def test_training_changes_every_parameter_and_the_checkpoint_records_the_spec(trained):
    architecture, base, ckpt, _ = trained
    before = dict(load_hf_model(base).named_parameters())
    model, encoder, meta = load_checkpoint(ckpt)
    after = dict(model.hf_model.named_parameters())
    assert after.keys() == before.keys() and len(after) > 10
    unchanged = [name for name, value in after.items() if torch.equal(value.detach(), before[name].detach())]
    assert not unchanged, f"{architecture}: parameters not updated by training: {unchanged}"
    eos = encoder.tokenizer.token_to_id(EOS)
    assert (meta.input_spec.join, meta.input_spec.pad_id, meta.input_spec.eos_id) == ("concat", eos, eos)
    assert json.loads((ckpt / "config.json").read_text())["pad_token_id"] == eos


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_mixed_batch_scores_each_row_as_alone_in_torch_and_onnx(trained, side):
    architecture, _, ckpt, bundle = trained
    model, encoder, _ = load_checkpoint(ckpt)
    model.eval()
    encoder = InputEncoder(encoder.tokenizer, encoder.spec.model_copy(update={"padding_side": side}))
    batch = encoder.pad(encoder.encode(MIXED_ROWS))
    lengths = batch.attention_mask.sum(axis=1)
    assert lengths.max() >= 5 * lengths.min() and batch.padding_ratio > 0.4  # padding really matters here

    together, alone = _scores(model, encoder, MIXED_ROWS)
    assert np.max(np.abs(together - alone)) <= 1e-5, f"{architecture} {side}: {together} vs {alone}"
    assert np.ptp(alone) > 1e-3  # the rows score differently, so a mix-up would show

    engine = OnnxRewardModel(str(bundle.model_path), device="cpu")
    onnx_scores = engine(batch)
    assert np.max(np.abs(onnx_scores - together)) <= PARITY_TOLERANCE, f"{architecture} {side}: {onnx_scores} vs {together}"

    # The pad id's value does not matter: the mask says which tokens are real, not a comparison with pad.
    other = encoder.pad(encoder.encode(MIXED_ROWS))
    other.input_ids[other.attention_mask == 0] = 7
    assert np.max(np.abs(engine(other) - onnx_scores)) <= 1e-5
    with torch.no_grad():
        repadded = model(torch.from_numpy(other.input_ids), torch.from_numpy(other.attention_mask)).numpy()
    assert np.max(np.abs(repadded - together)) <= 1e-5


def test_last_token_score_is_the_models_own_head_on_an_unpadded_row(trained):
    _, _, ckpt, _ = trained
    model, encoder, _ = load_checkpoint(ckpt)
    model.eval()
    [row] = encoder.encode([MIXED_ROWS[1]])
    ids = torch.tensor([row.ids])
    # transformers pools at the last token that is not pad; with pad = EOS ending the row it would skip
    # EOS, so compare with an id the row does not contain.
    model.hf_model.config.pad_token_id = model.hf_model.config.vocab_size - 1
    with torch.no_grad():
        own = model.hf_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, 0].item()
        ours = model(ids, torch.ones_like(ids)).item()
    assert ours == pytest.approx(own, abs=1e-6)


def test_bundle_says_decoder_and_its_onnx_graph_is_dynamic(trained):
    import onnx

    architecture, _, _, bundle = trained
    manifest = bundle.manifest
    assert (manifest.model.architecture, manifest.model.pooling) == ("decoder", "last_token")
    assert manifest.input.join == "concat" and manifest.input.eos_id == manifest.input.pad_id
    assert manifest.provenance["parity_max_abs_diff"] <= PARITY_TOLERANCE
    raw = json.loads((bundle.path / "bundle.json").read_text())
    assert raw["input"]["eos_id"] == manifest.input.eos_id
    proto = onnx.load(str(bundle.model_path))
    assert proto.ir_version <= 10 and proto.opset_import[0].version == 17
    for tensor in proto.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "sequence"], f"{architecture}: {tensor.name} {dims}"


def test_continued_training_from_a_checkpoint_keeps_eos_trainable(trained):
    _, _, ckpt, _ = trained
    hf_model = load_hf_model(ckpt)
    eos = json.loads((ckpt / "config.json").read_text())["pad_token_id"]
    # The saved pad_token_id makes transformers build the embedding with padding_idx = EOS (no gradient).
    assert hf_model.get_input_embeddings().padding_idx == eos
    from tokenizers import Tokenizer

    input_spec_for(hf_model, Tokenizer.from_file(str(ckpt / "tokenizer.json")), 32)
    assert hf_model.get_input_embeddings().padding_idx is None


def test_position_ids_follow_the_mask_for_absolute_position_embeddings(tmp_path):
    """Rotary models (Llama, Qwen2) only see relative positions, so a shift hides wrong position ids;
    GPT-2's learned absolute positions do not: a left-padded row must still start at position 0."""
    from rmserve.service.core.engine import OnnxRewardModel
    from rmserve.training.export import export_onnx
    from tests.tiny_decoders import build_decoder_tokenizer

    tokenizer = build_decoder_tokenizer("qwen2")
    config = transformers.GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_embd=32, n_layer=2, n_head=4,
                                     n_positions=128, num_labels=1, eos_token_id=2, bos_token_id=2)
    torch.manual_seed(0)
    hf_model = transformers.GPT2ForSequenceClassification(config).eval()
    model = RewardModel(hf_model)
    spec = input_spec_for(hf_model, tokenizer, 64)
    assert model.is_decoder and spec.join == "concat"
    export_onnx(model, tmp_path / "model.onnx")
    engine = OnnxRewardModel(str(tmp_path / "model.onnx"), device="cpu")
    for side in ("right", "left"):
        encoder = InputEncoder(tokenizer, spec.model_copy(update={"padding_side": side}))
        together, alone = _scores(model, encoder, MIXED_ROWS)
        assert np.max(np.abs(together - alone)) <= 1e-5, f"{side}: {together} vs {alone}"
        onnx_scores = engine(encoder.pad(encoder.encode(MIXED_ROWS)))
        assert np.max(np.abs(onnx_scores - together)) <= PARITY_TOLERANCE, f"{side}: {onnx_scores} vs {together}"
