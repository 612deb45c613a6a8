#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora, tests/fuzz/corpus/<surface>/ (committed; rerun only to change
them).

gguf: the smallest complete Cobra model (4x4 images, 2x2 patches, 4-wide layers, a 262-token
vocabulary: every tensor and key the loaders read, in F32, F16 and Q8_0), variants of it (a wrong
architecture, three towers, fewer embedding rows than tokens, an 8-token context), and copies cut
short in the header, the metadata, the tensor table and the data. The tiny test model (4-9 MB)
would be too big a seed: mutations would land in tensor data.
tokenizer: texts from tests/data/tokenizer/cases.jsonl, and the ids of some cases as 16-bit ids.
image: one small frame per pixel format, odd sizes and padded strides among them.
labels: NUL-separated label lists, one per rule of cobra_session_score_labels() and some that pass.
npy: arrays as numpy writes them (versions 1.0 and 2.0, the dtypes cobra-cli reads, an empty
shape), and headers that end early, among them the one that ends right after 'descr':'<.

    /usr/bin/python3 tests/fuzz/make_seeds.py [SURFACE...]   (default: all)
"""

import io
import json
import pathlib
import struct
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import gguf_io as g  # noqa: E402
from cobra_convert import EOS_TOKEN, PROMPT_TEMPLATE  # noqa: E402

# ---------------------------------------------------------------------------------------------
# gguf
# ---------------------------------------------------------------------------------------------

IMAGE, PATCH = 4, 2
GRID2 = (IMAGE // PATCH) ** 2
TOWERS = {  # name: width, MLP width, heads, stored blocks, register tokens, class token, LayerScale
    "dino": (4, 8, 2, 1, 1, True, True),
    "siglip": (4, 6, 1, 1, 0, False, False),
}
D_MODEL, D_INNER, D_STATE, D_CONV, DT_RANK = 4, 8, 2, 2, 1
MERGES = ["Ġ t", "h e", "Ġt he", "i s", "Ġ is", "Ġ i", "Ġi t"]


def byte_chars():
    """GPT-2's byte -> character map, as the engine's tokenizer builds it."""
    printable = [b for b in range(256)
                 if ord("!") <= b <= ord("~") or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def vocabulary():
    """(tokens, types): a special end token, the 256 byte tokens, the merged tokens, an added
    user token and an unused slot, so every token type the loader knows occurs."""
    merged = ["".join(m.split(" ")) for m in MERGES]
    tokens = [EOS_TOKEN] + byte_chars() + merged + ["<|assistant|>", "[PAD0]"]
    types = [3] + [1] * (256 + len(merged)) + [4, 5]
    return tokens, types


class Tensors:
    """Tensor declarations for the writer, with small seeded random values."""

    def __init__(self, writer):
        self.w = writer
        self.rng = np.random.default_rng(7)

    def add(self, name, shape, ggml_type=g.F32, value=None):
        data = (np.full(shape, value, dtype=np.float32) if value is not None
                else (0.2 * self.rng.standard_normal(shape)).astype(np.float32))
        self.w.add_tensor(name, shape, ggml_type, lambda: data)


def add_tower(w, t, name, width, mlp, heads, blocks, regs, cls, layer_scale):
    k = f"clip.{name}."
    w.add_uint32(k + "embedding_length", width)
    w.add_uint32(k + "feed_forward_length", mlp)
    w.add_uint32(k + "attention.head_count", heads)
    w.add_float32(k + "attention.layer_norm_epsilon", 1e-6)
    w.add_uint32(k + "block_count", blocks + 1)  # the block after the feature layer is not stored
    w.add_uint32(k + "feature_layer", blocks - 1)
    w.add_uint32(k + "n_register_tokens", regs)
    w.add_bool(k + "has_class_token", cls)
    w.add_array(k + "image_mean", g.T_FLOAT32, [0.5, 0.5, 0.5])
    w.add_array(k + "image_std", g.T_FLOAT32, [0.25, 0.5, 0.75])
    t.add(name + ".patch_embd.weight", (width, 3 * PATCH * PATCH))
    t.add(name + ".patch_embd.bias", (width,))
    t.add(name + ".position_embd.weight", (GRID2, width))
    if cls:
        t.add(name + ".class_embd", (width,))
    if regs:
        t.add(name + ".reg_embd", (regs, width))
    for i in range(blocks):
        b = f"{name}.blk.{i}."
        for norm in ("ln1", "ln2"):
            t.add(b + norm + ".weight", (width,), value=1.0)
            t.add(b + norm + ".bias", (width,))
        t.add(b + "attn_qkv.weight", (3 * width, width), g.F16)
        t.add(b + "attn_qkv.bias", (3 * width,))
        t.add(b + "attn_out.weight", (width, width))
        t.add(b + "attn_out.bias", (width,))
        t.add(b + "ffn_up.weight", (mlp, width))
        t.add(b + "ffn_up.bias", (mlp,))
        t.add(b + "ffn_down.weight", (width, mlp))
        t.add(b + "ffn_down.bias", (width,))
        if layer_scale:
            t.add(b + "ls1.weight", (width,))
            t.add(b + "ls2.weight", (width,))


def add_projector(t, fused):
    t.add("mm.0.weight", (4 * fused, fused))
    t.add("mm.0.bias", (4 * fused,))
    t.add("mm.2.weight", (D_MODEL, 4 * fused), g.Q8_0)  # 32 inputs: one Q8_0 block per row
    t.add("mm.2.bias", (D_MODEL,))
    t.add("mm.4.weight", (D_MODEL, D_MODEL), g.F16)
    t.add("mm.4.bias", (D_MODEL,))


def add_mamba(w, t, vocab, context):
    for key, value in [("context_length", context), ("embedding_length", D_MODEL),
                       ("block_count", 1), ("ssm.conv_kernel", D_CONV), ("ssm.inner_size", D_INNER),
                       ("ssm.state_size", D_STATE), ("ssm.time_step_rank", DT_RANK),
                       ("vocab_size", vocab)]:
        w.add_uint32("mamba." + key, value)
    w.add_float32("mamba.attention.layer_norm_rms_epsilon", 1e-5)
    t.add("token_embd.weight", (vocab, D_MODEL))
    t.add("output_norm.weight", (D_MODEL,), value=1.0)
    t.add("blk.0.attn_norm.weight", (D_MODEL,), value=1.0)
    t.add("blk.0.ssm_in.weight", (2 * D_INNER, D_MODEL))
    t.add("blk.0.ssm_conv1d.weight", (D_INNER, D_CONV))
    t.add("blk.0.ssm_conv1d.bias", (D_INNER,))
    t.add("blk.0.ssm_x.weight", (DT_RANK + 2 * D_STATE, D_INNER))
    t.add("blk.0.ssm_dt.weight", (D_INNER, DT_RANK))
    t.add("blk.0.ssm_dt.bias", (D_INNER,))
    t.add("blk.0.ssm_a", (D_INNER, D_STATE), value=-1.0)
    t.add("blk.0.ssm_d", (D_INNER,), value=1.0)
    t.add("blk.0.ssm_out.weight", (D_MODEL, D_INNER), g.F16)


def write_model(path, arch="cobra", towers=tuple(TOWERS), embedding_rows=None, context=64):
    """The minimal model; the arguments make variants that load but fail or cut later."""
    w = g.GGUFWriter()
    t = Tensors(w)
    w.add_string("general.architecture", arch)
    w.add_string("general.name", "cobra-fuzz-seed")
    w.add_uint32("general.alignment", w.alignment)
    w.add_string("cobra.image_resize_strategy", "resize-naive")
    w.add_string("cobra.prompt_template", PROMPT_TEMPLATE)
    w.add_uint32("clip.vision.image_size", IMAGE)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_array("clip.vision.feature_order", g.T_STRING, list(towers))
    for name, hparams in TOWERS.items():
        add_tower(w, t, name, *hparams)
    add_projector(t, sum(h[0] for h in TOWERS.values()))
    tokens, types = vocabulary()
    add_mamba(w, t, embedding_rows or len(tokens), context)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", g.T_STRING, tokens)
    w.add_array("tokenizer.ggml.token_type", g.T_INT32, types)
    w.add_array("tokenizer.ggml.merges", g.T_STRING, MERGES)
    w.add_uint32("tokenizer.ggml.eos_token_id", 0)
    w.write(path)


def gguf_seeds(out):
    model = out / "minimal.gguf"
    write_model(model)
    write_model(out / "wrong-architecture.gguf", arch="mamba")
    write_model(out / "three-towers.gguf", towers=("dino", "siglip", "dino"))
    write_model(out / "short-embedding.gguf", embedding_rows=64)  # most byte tokens lack a row
    write_model(out / "short-context.gguf", context=8)  # the question is cut to fit
    data = model.read_bytes()
    r = g.GGUFReader(model)
    first_tensor = min(t.offset for t in r.tensors.values())
    cuts = {"header": 24, "metadata": 200, "tensor-table": r.data_start - 64,
            "data": first_tensor + (len(data) - first_tensor) // 2}
    for what, n in cuts.items():
        (out / f"truncated-{what}.gguf").write_bytes(data[:n])


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------

def fuzz_ids(ids):
    return b"".join(struct.pack("<H", n + 8) for n in ids)  # the fuzzer subtracts 8


def tokenizer_seeds(out, max_text=160, every=7):
    """Every `every`-th case short enough, as text; their ids in the fuzzer's 16-bit id form."""
    cases = [json.loads(line) for line in open(ROOT / "tests/data/tokenizer/cases.jsonl")]
    short = [c for c in cases if 0 < len(c["text"].encode()) <= max_text][::every]
    for i, c in enumerate(short):
        (out / f"text-{i:02d}").write_bytes(c["text"].encode())
        (out / f"ids-{i:02d}").write_bytes(fuzz_ids(c["ids"]))
    # Token 177 is byte 0: decoded text may hold NULs (the fuzzer's first find, a check too strict).
    (out / "ids-nul-byte").write_bytes(fuzz_ids([177, 50, 177, 0, 177]))


# ---------------------------------------------------------------------------------------------
# image
# ---------------------------------------------------------------------------------------------

FORMATS = ["RGB", "RGBA", "RGBx", "BGR", "BGRA", "BGRx", "ARGB", "xRGB", "ABGR", "xBGR",
           "I420", "NV12", "GRAY8", "YUY2", "UYVY", "NV21", "YV12"]


def image_seed(fmt, width, height, pad, matrix, out_w, out_h, pixels):
    """The fuzzer's 12-byte header (see fuzz_image.c) and the pixel bytes."""
    header = struct.pack("<BBhhBBBBBB", fmt, matrix, width, height, pad + 4, pad + 4, pad + 4, 0,
                         out_w - 1, out_h - 1)
    return header + pixels


def image_seeds(out):
    rng = np.random.default_rng(11)
    sizes = [(5, 3, 0), (7, 5, 3), (1, 1, 0), (16, 9, 16)]
    for f, name in enumerate(FORMATS):
        for i, (w, h, pad) in enumerate(sizes):
            pixels = rng.integers(0, 256, size=64, dtype=np.uint8).tobytes()
            seed = image_seed(f, w, h, pad, f % 4, 4 + i, 4 + 2 * i, pixels)
            (out / f"{name}-{w}x{h}").write_bytes(seed)


# ---------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------

MAX_LABELS, MAX_LABEL_TOKENS = 256, 64   # include/cobra.h


def labels_seeds(out):
    lists = {
        "yes-no": ["yes", "no"],
        "multi-token": ["a red circle", "smpte color bars", "café", "blue sky"],
        "escapes": ['say "hi"\\', "a\tb", "line\nbreak", "<|endoftext|>"],
        "blank": ["yes", "  "],
        "empty-list": [""],
        "bad-utf8": [b"caf\xc3 bad"],
        "no-embedding": ["RWKV"],
        "longest": ["cat" + " cat" * (MAX_LABEL_TOKENS - 1)],
        "too-long": ["cat" + " cat" * MAX_LABEL_TOKENS],
        "most": ["a"] * MAX_LABELS,
        "too-many": ["a"] * (MAX_LABELS + 1),
    }
    for name, labels in lists.items():
        encoded = [x if isinstance(x, bytes) else x.encode() for x in labels]
        (out / name).write_bytes(b"\0".join(encoded))


# ---------------------------------------------------------------------------------------------
# npy
# ---------------------------------------------------------------------------------------------

def npy_bytes(array, version=None):
    buf = io.BytesIO()
    if version:
        np.lib.format.write_array(buf, array, version=version)
    else:
        np.save(buf, array)
    return buf.getvalue()


def npy_header_only(header):
    """A version 1.0 file that ends where its header does."""
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def npy_seeds(out):
    rng = np.random.default_rng(13)
    (out / "image-u1").write_bytes(npy_bytes(rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)))
    (out / "f4").write_bytes(npy_bytes(rng.standard_normal((2, 3)).astype(np.float32)))
    (out / "i4-v2").write_bytes(npy_bytes(np.arange(7, dtype=np.int32), version=(2, 0)))
    (out / "f8-scalar").write_bytes(npy_bytes(np.float64(1.5)))
    (out / "empty").write_bytes(npy_bytes(np.zeros((0, 4), dtype=np.uint8)))
    (out / "descr-last-cut").write_bytes(
        npy_header_only(b"{'fortran_order': False, 'shape': (2,), 'descr':'<"))
    (out / "shape-cut").write_bytes(
        npy_header_only(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, "))


# ---------------------------------------------------------------------------------------------
# results: region boxes on a frame, then bytes for the JSON strings (see fuzz_results.c)
# ---------------------------------------------------------------------------------------------

def results_seeds(out):
    def seed(fmt, w, h, margin, max_rois, boxes, text):
        head = bytes([fmt, w - 1, h - 1, margin, max_rois - 1, len(boxes)])
        body = b"".join(struct.pack("<IIIIB", *box) for box in boxes)
        return head + body + text
    inside = (2, 3, 10, 9, 0)
    cases = {
        "i420-odd-corner": seed(0, 33, 21, 0, 4, [(1, 1, 7, 5, 0), inside], b"a red circle"),
        "yuy2-edge": seed(4, 16, 16, 64, 4, [(15, 15, 1, 1, 0), (0, 0, 16, 16, 0)], b"yes"),
        "outside-and-empty": seed(7, 20, 10, 0, 8, [(30, 0, 5, 5, 0), (5, 5, 0, 3, 0)], b""),
        "huge-box": seed(2, 8, 8, 255, 2, [(0xFFFFFFF0, 0xFFFFFFF0, 0xFFFFFFFF, 40, 0),
                                            (3, 3, 0xFFFFFFFF, 0xFFFFFFFF, 0)], b"\x00"),
        "types-and-max": seed(6, 40, 30, 10, 1, [inside, (1, 1, 4, 4, 1), inside], b"dog"),
        "json-escapes": seed(9, 4, 4, 0, 1, [], 'quote " back \\ tab \t nl \n é'.encode()),
        "json-bad-utf8": seed(8, 4, 4, 0, 1, [], b"caf\xc3 \xff\xfe\x01\x7f end"),
    }
    for name, data in cases.items():
        (out / name).write_bytes(data)


def main():
    surfaces = [("gguf", gguf_seeds), ("tokenizer", tokenizer_seeds), ("image", image_seeds),
                ("npy", npy_seeds), ("labels", labels_seeds), ("results", results_seeds)]
    chosen = sys.argv[1:] or [name for name, _ in surfaces]
    for surface, make in surfaces:
        if surface not in chosen:
            continue
        out = HERE / "corpus" / surface
        out.mkdir(parents=True, exist_ok=True)
        for old in out.iterdir():
            old.unlink()
        make(out)


if __name__ == "__main__":
    main()
