"""The training loop on a tiny random BERT: accumulation, resume, schedules, listwise data, LoRA, bf16."""

import json
import math
import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rmserve.training.config import TrainConfig  # noqa: E402
from rmserve.training.log import LOG_FILE, read_log  # noqa: E402
from rmserve.training.model import load_checkpoint  # noqa: E402
from rmserve.training.train import lr_factor, train  # noqa: E402
from tests.unit.test_train_smoke import tiny_base  # noqa: E402,F401 - fixture


def write_rows(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def mixed_rows(n=16):
    """Pairs, soft labels, margins and rankings of one file."""
    rows = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            rows.append({"prompt": f"hello there {i % 3}", "chosen": "sure i am fine thanks", "rejected": "no"})
        elif kind == 1:
            rows.append({"prompt": f"hi {i}", "chosen": "fine thanks", "rejected": "no no", "label": 0.8})
        elif kind == 2:
            rows.append({"prompt": f"hey {i}", "chosen": "i am fine", "rejected": "no", "margin": 1.5})
        else:
            rows.append({"prompt": f"yo {i}", "responses": ["sure i am fine thanks", "fine", "no"]})
    return rows


def config(tmp_path, base, data, name, **overrides):
    values = dict(output_dir=str(tmp_path / name), base_model=str(base), train_data=str(data), dev_data=str(data),
                  max_length=32, batch_size=4, max_steps=4, learning_rate=1e-2, warmup_ratio=0.25, progress=False,
                  tensorboard=False, threads=1,
                  calibration_split=0.0)  # these tests count every row; the hold-out is tested with export
    values.update(overrides)
    return TrainConfig(**values)


def weights(directory):
    model, _, _ = load_checkpoint(directory)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_gradient_accumulation_gives_the_same_weights(tiny_base, tmp_path):  # noqa: F811
    data = write_rows(tmp_path / "mixed.jsonl", mixed_rows())
    # Centering gives the head's bias a real gradient: without it the bias cancels in r_c - r_r, its
    # gradient is float noise around 0, and Adam turns that noise into steps of size lr.
    train(config(tmp_path, tiny_base, data, "one", center_rewards=0.1))
    train(config(tmp_path, tiny_base, data, "two", center_rewards=0.1, gradient_accumulation_steps=2))
    assert max_diff(weights(tmp_path / "one"), weights(tmp_path / "two")) < 1e-5


def test_a_resumed_run_ends_with_the_same_weights(tiny_base, tmp_path):  # noqa: F811
    data = write_rows(tmp_path / "mixed.jsonl", mixed_rows())
    straight = config(tmp_path, tiny_base, data, "straight", max_steps=6, save_steps=2, save_total_limit=5)
    train(straight)
    states = sorted(p.name for p in (tmp_path / "straight" / "training_state").iterdir())
    assert states == ["step-2", "step-4"]
    resumed = config(tmp_path, tiny_base, data, "resumed", max_steps=6,
                     resume_from=str(tmp_path / "straight" / "training_state" / "step-2"))
    metrics = train(resumed)
    assert metrics["resumed_at_step"] == 2 and metrics["train_steps"] == 6
    assert max_diff(weights(tmp_path / "straight"), weights(tmp_path / "resumed")) == 0.0
    # The resumed run's log holds only the steps it ran, ending at the same step.
    steps = [r["step"] for r in read_log(tmp_path / "resumed" / LOG_FILE) if "loss" in r]
    assert steps == [3, 4, 5, 6]


def test_resume_refuses_changed_options_and_names_them(tiny_base, tmp_path):  # noqa: F811
    data = write_rows(tmp_path / "mixed.jsonl", mixed_rows())
    train(config(tmp_path, tiny_base, data, "a", save_steps=2))
    with pytest.raises(ValueError, match="learning_rate: saved 0.01, now 0.02"):
        train(config(tmp_path, tiny_base, data, "a", learning_rate=2e-2, resume_from="latest"))


def test_a_new_run_in_a_used_directory_does_not_keep_the_old_runs_states(tiny_base, tmp_path):  # noqa: F811
    """An earlier run's states outnumbered the new run's: pruning kept the old 'step-9' as the latest and deleted
    the new run's own, so --resume-from latest could not continue the new run (or silently continued the old)."""
    data = write_rows(tmp_path / "mixed.jsonl", mixed_rows())
    train(config(tmp_path, tiny_base, data, "a", max_steps=10, save_steps=3))
    train(config(tmp_path, tiny_base, data, "a", max_steps=6, save_steps=2, seed=1))
    root = tmp_path / "a" / "training_state"
    assert sorted(p.name for p in root.iterdir()) == ["step-2", "step-4"]
    assert {json.loads((p / "state.json").read_text())["options"]["seed"] for p in root.iterdir()} == {1}


def test_mixed_formats_train_and_log(tiny_base, tmp_path):  # noqa: F811
    data = write_rows(tmp_path / "mixed.jsonl", mixed_rows())
    metrics = train(config(tmp_path, tiny_base, data, "mixed", eval_steps=2, center_rewards=0.1))
    # 4 rankings of 3 (3 pairs each) + 12 pairs.
    assert metrics["train_rows"] == 16 and metrics["train_pairs"] == 4 * 3 + 12
    log = read_log(tmp_path / "mixed" / LOG_FILE)
    step_lines = [r for r in log if "loss" in r]
    eval_lines = [r for r in log if "dev_accuracy" in r]
    assert [r["step"] for r in step_lines] == [1, 2, 3, 4]
    assert [r["step"] for r in eval_lines] == [2, 4]
    assert all(r["lr"] > 0 and r["grad_norm"] >= 0 and r["pairs_per_s"] > 0 for r in step_lines)


def test_lora_trains_adapters_and_saves_a_plain_model(tiny_base, tmp_path):  # noqa: F811
    pytest.importorskip("peft")
    data = write_rows(tmp_path / "mixed.jsonl", mixed_rows())
    before = weights_of_base(tiny_base)
    train(config(tmp_path, tiny_base, data, "lora", lora_r=4))
    after = weights(tmp_path / "lora")
    assert after.keys() == before.keys()  # merged: no adapter tensors left
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert any("classifier" in k for k in changed)  # the head is fully trained
    assert any("encoder.layer" in k for k in changed)  # adapters merged into the attention/MLP weights
    assert not any("embeddings" in k for k in changed)  # LoRA leaves non-target weights alone


def weights_of_base(base):
    from rmserve.training.model import RewardModel, load_hf_model

    return {k: v.detach().clone() for k, v in RewardModel(load_hf_model(base)).state_dict().items()}


def test_bf16_and_gradient_checkpointing_run(tiny_base, tmp_path):  # noqa: F811
    data = write_rows(tmp_path / "mixed.jsonl", mixed_rows())
    metrics = train(config(tmp_path, tiny_base, data, "bf16", bf16=True, gradient_checkpointing=True))
    assert math.isfinite(metrics["train_loss_last20"])
    assert 0.0 <= metrics["dev_accuracy"] <= 1.0


@pytest.mark.parametrize("schedule, expected", [("linear", [0.5, 1.0, 0.5, 0.0]), ("cosine", [0.5, 1.0, 0.5, 0.0]),
                                                  ("constant", [0.5, 1.0, 1.0, 1.0])])
def test_learning_rate_schedules(schedule, expected):
    # 5 steps, 1 of warm-up: warm-up reaches 0.5 at step 0, then the schedule runs over 4 steps.
    got = [lr_factor(s, 5, 1, schedule) for s in (0, 1, 3, 5)]
    assert got == pytest.approx(expected, abs=1e-9)


def test_split_by_length_cuts_where_padding_outweighs_a_pass():
    from rmserve.training.batching import split_by_length

    assert split_by_length([40, 250, 45, 240], pass_cost=100) == [[0, 2], [3, 1]]
    assert split_by_length([40, 250, 45, 240], pass_cost=10**9) == [[0, 2, 3, 1]]
    assert split_by_length([7], pass_cost=0) == [[0]]


def test_batch_rewards_do_not_depend_on_the_passes(tiny_base):  # noqa: F811
    from tokenizers import Tokenizer

    from rmserve.service.core.inputs import InputEncoder
    from rmserve.training.batching import collate, encode_groups
    from rmserve.training.model import RewardModel, input_spec_for, load_hf_model
    from rmserve.training.records import Comparison, PreferenceGroup

    hf = load_hf_model(tiny_base)
    tokenizer = Tokenizer.from_file(str(tiny_base / "tokenizer.json"))
    encoder = InputEncoder(tokenizer, input_spec_for(hf, tokenizer, 32))
    groups = encode_groups(encoder, [
        PreferenceGroup("hello", ("sure i am fine thanks " * 4, "no"), (Comparison(0, 1),)),
        PreferenceGroup("hi there", ("fine", "no no no i am not fine " * 3), (Comparison(0, 1),)),
    ])
    model = RewardModel(hf).eval()
    split, whole = collate(encoder, groups, pass_cost=1), collate(encoder, groups, pass_cost=10**9)
    assert len(split.passes) > 1 and len(whole.passes) == 1 and split.padded_tokens < whole.padded_tokens
    with torch.no_grad():
        assert torch.allclose(split.rewards(model), whole.rewards(model), atol=1e-5)


def test_training_counts_an_exact_tie_in_score_as_half_like_eval():
    import numpy as np
    import torch

    from rmserve.training.evaluate import tie_aware_accuracy
    from rmserve.training.train import pair_accuracy_counts

    delta = torch.tensor([0.0, 1.0, -1.0, 0.3, 0.0])
    label = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.0])  # the fourth pair is a tie in the data: not counted
    right, counted = pair_accuracy_counts(delta, label)
    assert (right, counted) == (2.0, 4)  # 0.5 + 1 + 0 + 0.5
    accuracy, ties = tie_aware_accuracy(delta.numpy().astype(np.float64), label.numpy().astype(np.float64))
    assert accuracy == right / counted and ties == 1


@pytest.mark.parametrize("option, value, words", [
    ("max_steps", 0, "--max-steps must be at least 1"),  # 0 trained a whole epoch (0 read as "not given")
    ("max_steps", -3, "--max-steps must be at least 1"),  # trained nothing and saved the checkpoint
    ("epochs", 0.0, "--epochs must be a finite number > 0"),  # trained one step
    ("epochs", -1.0, "--epochs must be a finite number > 0"),
    ("epochs", math.nan, "--epochs must be a finite number > 0"),
    ("limit_train", 0, "--limit-train must be at least 1"),  # blamed the file: "holds no preference rows"
    ("limit_dev", -2, "--limit-dev must be at least 1"),
    ("warmup_ratio", 2.0, "--warmup-ratio must be in [0, 1]"),  # the learning rate never reached its peak
    ("save_steps", -1, "--save-steps must be 0 or more"),  # saved a state every step
    ("eval_steps", -1, "--eval-steps must be 0 or more"),
    ("save_total_limit", 0, "--save-total-limit must be at least 1"),
    ("max_grad_norm", -1.0, "--max-grad-norm must be 0 or more"),
    ("max_length", 4, "--max-length must be at least 8"),
    ("threads", 0, "--threads must be at least 1"),
    ("batch_size", 0, "--batch-size must be at least 1"),
    ("gradient_accumulation_steps", 0, "--gradient-accumulation-steps must be at least 1"),
])
def test_options_out_of_range_are_refused_naming_the_flag(option, value, words):
    with pytest.raises(ValueError, match=f"^{re.escape(words)}.*got {re.escape(str(value))}$"):
        TrainConfig(**{option: value})


def test_options_at_their_bounds_are_accepted():
    TrainConfig(max_steps=1, epochs=0.5, limit_train=1, limit_dev=1, warmup_ratio=1.0, save_steps=0, eval_steps=0,
                save_total_limit=1, max_grad_norm=0.0, max_length=8, threads=1, learning_rate=0.0)
