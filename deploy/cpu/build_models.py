"""Build the two tiny local models the CPU profile serves: random weights, a locally trained tokenizer.

Runs inside the vLLM venv (needs torch, transformers, tokenizers). Nothing is downloaded: the tokenizer is
trained on a corpus generated here, and the weights are random with a fixed seed, so the build is
deterministic and takes a few seconds.

    python deploy/cpu/build_models.py OUT_DIR
writes OUT_DIR/triage-small and OUT_DIR/triage-large (the large one about ten times the small one).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Sizes that vLLM's CPU attention accepts (head_dim 32 or 64).
SIZES = {
    "triage-small": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    },
    "triage-large": {
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
}
WORDS = """
the a an of to in is was for on with as by at from it this that which model question answer
request route small large cost price token user system assistant what how why when where who
compute solve explain write code function list number sum total each per day week year apple
train data value result step first second then therefore because if else return print hello
world python math prove show find give name describe compare translate summarize story poem
""".split()  # noqa: SIM905 (a word list reads better as text)


def corpus(lines: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 24))]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 10_000)))
        out.append(" ".join(words) + rng.choice([".", "?", "!", ":"]))
    return out


def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(20_000), trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "model_max_length": 512,
                "chat_template": CHAT_TEMPLATE,
                "add_bos_token": False,
            },
            indent=2,
        )
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, indent=2)
    )


def build(name: str, out_root: Path) -> Path:
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    vocab = Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=vocab,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=SPECIAL.index("<|im_end|>"),
        pad_token_id=0,
        torch_dtype="float32",
        **SIZES[name],
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": config.eos_token_id}))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[0])
    for name in SIZES:
        path = build(name, root)
        print(f"built {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
