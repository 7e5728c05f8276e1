"""Small models, tokenizers and recipes that the tests make, and a runner for `axolotl train`.

The tiny tokenizer is a byte-level BPE trained on generated STEM text, so it
tokenises the Stage-1 template realistically; its 600 tokens sit in 640
embedding rows (padded, as Qwen pads 151,669 tokens to 151,936 rows).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from proofkd.core.data.stem import generate
from proofkd.core.templates import render_stage1

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "proofkd.plugin.ProofKDPlugin"
STRATEGY = "proofkd.plugin.prompt_strategies.stage1"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer(
    path: Path, vocab_size: int = 600, split_pattern: str | None = None, chat_template: str | None = None
):
    """A byte-level BPE trained on Stage-1 text; `split_pattern` adds a regex Split first (as Qwen's has)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [render_stage1(r["question"], r["CoT"], r["response"]).text for r in generate("train", 400, seed=7)]
    tok = Tokenizer(models.BPE())
    if split_pattern:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split_pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.save_pretrained(path)
    return fast


def make_model(
    path: Path,
    tokenizer_dir: Path,
    *,
    hidden: int,
    layers: int,
    seed: int,
    rows: int = 640,
    arch="llama",
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate: int | None = None,
    tied: bool = True,
    init_std: float = 0.02,
):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(
        vocab_size=rows,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=tied,
        initializer_range=init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    if arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=head_dim or hidden // heads, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_qwen3(root: Path, *, seed: int = 5) -> Path:
    """A one-layer Qwen3 at hidden 256 with a Qwen2-style tokenizer: the smallest model every export step takes."""
    from proofkd.export.tokenizer import QWEN2_SPLIT

    make_tokenizer(root / "tok", split_pattern=QWEN2_SPLIT)
    return make_model(
        root / "model",
        root / "tok",
        hidden=256,
        layers=1,
        seed=seed,
        arch="qwen3",
        heads=2,
        kv_heads=1,
        head_dim=128,
        intermediate=512,
    )


def pretrain(model_dir: Path, rows: list[dict], *, steps: int = 60, lr: float = 3e-3, seed: int = 0) -> Path:
    """A few plain next-token steps on Stage-1 rows, so a tiny teacher has something to teach."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from proofkd.core.tokenize import tokenize_stage1

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    encoded = [tokenize_stage1(tokenizer, r["question"], r["CoT"], r["response"], sequence_len=256) for r in rows]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        picks = torch.randint(0, len(encoded), (8,), generator=generator).tolist()
        length = max(len(encoded[i]["input_ids"]) for i in picks)
        ids = torch.full((8, length), tokenizer.pad_token_id)
        labels = torch.full((8, length), -100)
        for row, i in enumerate(picks):
            n = len(encoded[i]["input_ids"])
            ids[row, :n] = torch.tensor(encoded[i]["input_ids"])
            labels[row, :n] = torch.tensor(encoded[i]["labels"])
        model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(model_dir)
    return model_dir


def write_stage1_jsonl(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def tiny_recipe(
    workdir: Path,
    *,
    student: Path,
    teacher: Path,
    train_file: Path,
    eval_file: Path | None = None,
    **overrides,
) -> dict:
    """A complete Stage-1 recipe on tiny models: 2 SGD steps of 4 rows unless overridden."""
    cfg = {
        "base_model": str(student),
        "plugins": [PLUGIN],
        "proofkd_teacher": str(teacher),
        "proofkd_teacher_dtype": "float32",
        "datasets": [{"path": str(train_file), "ds_type": "json", "type": STRATEGY}],
        "train_on_inputs": True,
        "sequence_len": 256,
        "sample_packing": False,
        "pad_to_sequence_len": False,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_steps": 2,
        # SGD: its update is proportional to the gradient, so runs that split a step
        # differently stay comparable step after step (Adam's first update is about
        # lr * sign(g) and would amplify float32 summation-order noise).
        "optimizer": "sgd",
        "learning_rate": 1.0,
        "lr_scheduler": "constant",
        "seed": 42,
        "fp32": True,
        "bf16": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "val_set_size": 0,
        "dataset_prepared_path": str(workdir / "prepared"),
        "output_dir": str(workdir / "out"),
    }
    if eval_file is not None:
        cfg["test_datasets"] = [{"path": str(eval_file), "ds_type": "json", "split": "train", "type": STRATEGY}]
    cfg.update(overrides)
    return cfg


def axolotl_train(config: dict | Path, workdir: Path, *args: str, processes: int = 1, timeout: int = 900):
    """Run the real `axolotl train` CLI; return (returncode, combined output)."""
    if isinstance(config, dict):
        path = workdir / "recipe.yml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
    else:
        path = config
    launcher = (
        ["--launcher", "python"]
        if processes == 1
        else ["--launcher", "torchrun", "--", f"--nproc_per_node={processes}"]
    )
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["AXOLOTL_DO_NOT_TRACK"] = "1"
    command = [sys.executable, "-m", "axolotl.cli.main", "train", str(path), *args, *launcher]
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def read_log(output_dir: Path) -> list[dict]:
    path = Path(output_dir) / "proofkd_log.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_records(output_dir: Path) -> list[dict]:
    return [r for r in read_log(output_dir) if "loss" in r and "proofkd/kl" in r]
