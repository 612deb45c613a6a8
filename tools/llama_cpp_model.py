#!/usr/bin/env python3
"""Write the language model of a cobra GGUF as a llama.cpp `mamba` GGUF, for side-by-side benchmarks.

The cobra file already uses llama.cpp's Mamba key and tensor names and ggml's block layouts, so the
language model's tensors are copied byte for byte (same weights, same types) and only the towers,
the projector and the `clip.*` keys are left out. llama-bench then times the very weights
cobra-bench times (docs/performance.md, "Against llama.cpp").
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gguf_io  # noqa: E402

LM_TENSORS = ("token_embd.", "output", "blk.")
LM_KEYS = ("mamba.", "tokenizer.", "general.")
# llama.cpp counts the vocabulary by these arrays and wants as many embedding rows; GPT-NeoX's
# added tokens past the 50,280 rows (docs/model-format.md) are left out.
PER_TOKEN_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")


class RawTensor:
    """A tensor's encoded bytes, written as they are."""

    def __init__(self, info):
        self.shape = info.shape
        self.raw = info.raw


class RawWriter(gguf_io.GGUFWriter):
    @staticmethod
    def _write_data(f, values, ggml_type, chunk_values=0):
        f.write(memoryview(values.raw))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", help="a cobra GGUF (e.g. one tools/bench_model.py wrote)")
    ap.add_argument("output")
    args = ap.parse_args(argv)

    src = gguf_io.GGUFReader(args.input)
    if src.kv.get("general.architecture") != "cobra":
        sys.exit(f"{args.input}: general.architecture is not cobra")
    w = RawWriter(alignment=src.alignment)
    n_vocab = src.kv["mamba.vocab_size"]
    for key, value in src.kv.items():
        if not key.startswith(LM_KEYS) or key == "general.architecture":
            continue
        vtype, elem = src.kv_types[key]
        if key in PER_TOKEN_KEYS:
            value = value[:n_vocab]
        w.add(key, vtype, (elem, value) if vtype == gguf_io.T_ARRAY else value)
    w.add_string("general.architecture", "mamba")
    for name, info in src.tensors.items():
        if name.startswith(LM_TENSORS):
            w.add_tensor(name, info.shape, info.type, lambda info=info: RawTensor(info))
    w.write(args.output)


if __name__ == "__main__":
    main()
