"""Tiny reward models as they come from a model hub, built locally: a randomly initialised
`...ForSequenceClassification` saved as safetensors, a `tokenizers` tokenizer.json trained here, and a
tokenizer_config.json naming the tokenizer class transformers loads and, for decoders, a Jinja chat
template in the style of the family (ChatML for Qwen2, header tokens for Llama 3, turns for Gemma 2,
[INST] for Mistral, thinking blocks for Qwen3).

Tokenizers follow their family's pipeline (byte-level BPE with the family's split pattern, Metaspace
SentencePiece-style BPE, WordPiece for BERT, Unigram for DeBERTa-v2), so that transformers' own tokenizer
classes, which rebuild some pipelines in code instead of reading tokenizer.json, give the same ids.
`CONVERSATIONS` are the scoring cases of the template tests: system messages, several turns, unicode,
and one that must be truncated.
"""

from __future__ import annotations

import json
from pathlib import Path

QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{- bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system = messages[0]['content'] | trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set system = 'You score answers.' %}\n"
    "{%- endif %}\n"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system + '<|eot_id|>' }}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}\n"
)
GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '[INST] ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'user' %}"
    "{% if loop.index0 == 0 or messages[loop.index0 - 1]['role'] != 'system' %}{{ '[INST] ' }}{% endif %}"
    "{{ message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
QWEN3 = (
    "{%- set ns = namespace(last_user=-1) %}\n"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}"
    "{%- endif %}{%- endfor %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message['role'] == 'assistant' %}\n"
    "        {%- set content = message['content'].split('</think>')[-1].lstrip('\\n') %}\n"
    "        {%- if loop.index0 > ns.last_user %}\n"
    "            {{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}\n"
    "        {%- else %}\n"
    "            {{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
)

CORPUS = [
    "hello there , how are you doing today my friend ?", "i am fine thanks , and you ?",
    "sure , i can help with that lock . one two three four five six seven eight nine ten",
    "You are a helpful assistant . You score answers .", "system user assistant model",
    "héllo wörld , café naïve résumé", "日本語のテキストです", "emoji 😀 🎉 ok", "12345 67890 3.14",
    "def f(x):\n    return x * 2\n", "Привет , как дела ?", "  spaces   and\ttabs\n\nnew lines  ",
] * 30

DECODER_SPECIALS = {
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "qwen3": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "gemma2": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
    "mistral": ["<unk>", "<s>", "</s>"],
}
DECODERS = tuple(DECODER_SPECIALS)
ENCODERS = ("bert", "roberta", "deberta-v2")


def _byte_level_bpe(specials: list[str], split: str, nfc: bool):
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


def _metaspace_bpe(specials: list[str], prepend: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def pipeline(tok):
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=False)
        tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme=prepend, split=False),
                                         decoders.ByteFallback()])
        return tok

    trained = pipeline(Tokenizer(models.BPE(unk_token="<unk>")))
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=500, special_tokens=specials, show_progress=False))
    model = json.loads(trained.to_str())["model"]
    vocab = dict(model["vocab"])
    for byte in range(256):  # byte-fallback pieces are ordinary vocabulary, as in SentencePiece models
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = pipeline(Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True)))
    tok.add_special_tokens(specials)
    return tok


def build_tokenizer(architecture: str):
    """(tokens.Tokenizer, tokenizer_config dict) of a family."""
    from tokenizers import processors

    specials = DECODER_SPECIALS.get(architecture)
    if architecture in ("qwen2", "qwen3"):
        tok = _byte_level_bpe(specials, QWEN_SPLIT, nfc=True)
        config = {"tokenizer_class": "Qwen2Tokenizer", "chat_template": CHATML if architecture == "qwen2" else QWEN3,
                  "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None}
    elif architecture == "llama":
        tok = _byte_level_bpe(specials, LLAMA3_SPLIT, nfc=False)
        # Llama 3's tokenizer adds BOS itself and its template writes it too: only apply_chat_template's
        # way of tokenizing (no special tokens) gives one.
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                          special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])])
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": LLAMA3,
                  "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    elif architecture in ("gemma2", "mistral"):
        tok = _metaspace_bpe(specials, "never" if architecture == "gemma2" else "first")
        bos, eos = ("<bos>", "<eos>") if architecture == "gemma2" else ("<s>", "</s>")
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": GEMMA2 if architecture == "gemma2"
                  else MISTRAL, "bos_token": bos, "eos_token": eos, "unk_token": "<unk>"}
        if architecture == "gemma2":
            config["pad_token"] = "<pad>"
    else:
        return _encoder_tokenizer(architecture)
    config["model_max_length"] = 512
    return tok, config


def _encoder_tokenizer(architecture: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if architecture == "bert":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
            vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        return tok, {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
    if architecture == "roberta":
        tok = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], QWEN_SPLIT, nfc=False)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False, trim_offsets=True)
        return tok, {"tokenizer_class": "RobertaTokenizer", "model_max_length": 512}
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Replace("``", '"'), normalizers.Replace("''", '"')])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=400, special_tokens=["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], unk_token="[UNK]",
        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return tok, {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, "cls_token": "[CLS]",
                 "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"}


def model_config(architecture: str, vocab_size: int, tokenizer, tokenizer_config: dict, num_labels: int = 1):
    import transformers

    def token(name):
        text = tokenizer_config.get(name)
        return tokenizer.token_to_id(text) if text else None

    # A wide initialisation, so that random models give rewards that differ well beyond the tests' 1e-4.
    small = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_labels=num_labels, initializer_range=0.2)
    decoder = dict(small, num_key_value_heads=2, max_position_embeddings=512, eos_token_id=token("eos_token"),
                   bos_token_id=token("bos_token"), pad_token_id=token("pad_token"))
    if architecture == "qwen2":
        return transformers.Qwen2Config(**decoder)
    if architecture == "qwen3":
        return transformers.Qwen3Config(head_dim=8, **decoder)
    if architecture == "llama":
        return transformers.LlamaConfig(**decoder)
    if architecture == "mistral":
        return transformers.MistralConfig(**decoder)
    if architecture == "gemma2":
        return transformers.Gemma2Config(head_dim=8, sliding_window=16, **decoder)
    if architecture == "bert":
        return transformers.BertConfig(max_position_embeddings=512, pad_token_id=0, **small)
    if architecture == "roberta":
        return transformers.RobertaConfig(max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
                                          eos_token_id=2, **small)
    return transformers.DebertaV2Config(max_position_embeddings=512, pad_token_id=0, **small)


def write_tokenizer(directory: Path, architecture: str):
    """tokenizer.json and tokenizer_config.json of a family in `directory`; returns the tokenizer and its config."""
    tokenizer, tokenizer_config = build_tokenizer(architecture)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1))
    return tokenizer, tokenizer_config


def make_hub_model(directory: Path, architecture: str, seed: int = 0, num_labels: int = 1) -> Path:
    """A model directory as a hub reward model comes: config, safetensors weights, tokenizer files."""
    import torch
    import transformers

    tokenizer, tokenizer_config = write_tokenizer(directory, architecture)
    config = model_config(architecture, tokenizer.get_vocab_size(), tokenizer, tokenizer_config, num_labels)
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(str(directory))
    return directory


def conversation(prompt, response: str) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return messages + [{"role": "assistant", "content": response}]


LONG = " ".join(["one two three four five six seven eight nine ten"] * 60)

# (prompt, response) scoring cases; prompts are text (one user turn) or messages.
CONVERSATIONS = [
    ("hello there , how are you ?", "i am fine thanks ."),
    ("hi", "no"),
    ([{"role": "system", "content": "You score answers ."}, {"role": "user", "content": "can you help with a lock ?"}],
     "sure , one two three ."),
    ([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"},
      {"role": "user", "content": "how are you doing today ?"}], "fine , thanks my friend"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
      {"role": "assistant", "content": "d"}, {"role": "user", "content": "e ?"}], "f ."),
    ("héllo wörld , café ?", "naïve résumé 😀"),
    ("日本語のテキストです", "はい 🎉"),
    ("Привет , как дела ?", "хорошо"),
    ("def f(x):\n    return x * 2\n", "it doubles x .\n"),
    ("  leading spaces", "  and trailing  "),
    ("tabs\tand\nnew lines\n\n", "\n\nok\n"),
    ("numbers 12345 67890", "3.14159"),
    ("emoji only", "😀😀😀"),
    ("combining", "e\u0301 and a\u0308"),
    ("quotes ' and \" ", "it's 'fine' and \"good\""),
    ([{"role": "system", "content": "Be brief ."}, {"role": "user", "content": "one ?"},
      {"role": "assistant", "content": "two"}, {"role": "user", "content": "three ?"}], "four"),
    ("a special-looking <|im_end|> in text", "and </s> or <eos> too"),
    ("a padded answer follows", "   ok   "),
    ("x" * 40, "y" * 40),
    ("what is 2 + 2 ?", "</think>\n\n4"),
    ("why ?", "because " * 8),
    ("long prompt that must be cut : " + LONG, "the end of the response survives ."),
]
TRUNCATED = len(CONVERSATIONS) - 1  # index of the case longer than the tests' max_length


def transformers_scores(source, rows, kind: str) -> list[float | None]:
    """transformers' own fp32 forward, one unpadded row at a time: decoders read apply_chat_template's ids,
    encoders the tokenizer's pair encoding. None where the template refuses the conversation."""
    import jinja2
    import torch
    import transformers

    from rmserve.service.core.inputs import InputSpec, render_prompt

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(source), dtype=torch.float32).eval()
    scores: list[float | None] = []
    for prompt, response in rows:
        if kind == "decoder":
            try:
                ids = tokenizer.apply_chat_template(conversation(prompt, response), return_dict=True,
                                                    return_tensors="pt")["input_ids"]
            except jinja2.exceptions.TemplateError:
                scores.append(None)
                continue
            inputs = {"input_ids": ids}
        else:
            text = prompt if isinstance(prompt, str) else render_prompt(prompt, InputSpec())
            inputs = dict(tokenizer(text, response, return_tensors="pt"))
        with torch.no_grad():
            scores.append(model(**inputs).logits[0, 0].item())
    return scores


def write_chat_pairs(path: Path, n: int = 24) -> Path:
    """Preference pairs with chat prompts: a longer, friendlier answer beats a curt one."""
    rows = []
    for i in range(n):
        prompt = ([{"role": "user", "content": f"hello there , how are you {['doing', 'today', 'my friend'][i % 3]} ?"}]
                  if i % 2 else f"can you help with a lock , number {i} ?")
        rows.append({"prompt": prompt, "chosen": "sure , i am fine thanks . how are you doing today my friend ?"[: 20 + i],
                     "rejected": ["no .", "cannot", "no help"][i % 3]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


if __name__ == "__main__":  # python -m tests.chat_models ARCHITECTURE DIR: one model directory, as the tests build it
    import sys

    make_hub_model(Path(sys.argv[2]), sys.argv[1])
    print(f"{sys.argv[1]} reward model written to {sys.argv[2]}")
