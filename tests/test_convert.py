#!/usr/bin/env python3
"""Checks tools/cobra_convert.py against the reference fixtures.

Reads the tiny GGUFs meson built ($COBRA_TEST_MODELS/tiny-{f32,f16,q8_0,q4_0}.gguf; converted here when
the variable is unset), converts again with the timm SigLIP packaging and with other checkpoint
spellings, and runs the converter on broken inputs. Expected hyper-parameters come from the golden
manifest, expected values from the source checkpoints. Prints one line per check and ends with
"N passed, M failed"; exits 1 on any failure.
"""

import collections
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import cobra_convert  # noqa: E402  (its checkpoint readers give the source values)
import gguf_io  # noqa: E402

CONVERTER = ROOT / "tools" / "cobra_convert.py"
DATA = Path(os.environ.get("COBRA_TEST_DATA", ROOT / "tests" / "data"))
TINY = DATA / "tiny"
TOKENIZER = DATA / "tokenizer" / "gpt-neox-20b-tokenizer.json"
OUTTYPES = ("f32", "f16", "q8_0", "q4_0")
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2}

passed, failed = 0, 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}" + (f": {detail}" if detail else ""))
    return ok


def guarded(name, fn, *args):
    """Run a group of checks; an exception inside counts as one failure instead of a crash."""
    try:
        fn(*args)
    except Exception as e:  # report and carry on with the other groups
        check(name, False, f"{type(e).__name__}: {e}")


def convert(out, cobra=TINY / "cobra", dino=TINY / "dino", siglip=TINY / "siglip",
            outtype="f32", quiet=True):
    """Run the converter as a user would; returns (exit code, stderr), or with quiet=False
    (exit code, stderr, stdout)."""
    proc = subprocess.run([sys.executable, str(CONVERTER), "--cobra", str(cobra), "--dino", str(dino),
                           "--siglip", str(siglip), "--tokenizer", str(TOKENIZER), "-o", str(out),
                           "--outtype", outtype] + (["--quiet"] if quiet else []),
                          capture_output=True, text=True)
    return (proc.returncode, proc.stderr) if quiet else (proc.returncode, proc.stderr, proc.stdout)


# ---------------------------------------------------------------------------------------------
# Sources and expectations
# ---------------------------------------------------------------------------------------------

def numpy_tree(obj):
    """A checkpoint object with every SourceTensor read into a float32 array."""
    if isinstance(obj, dict):
        return {k: numpy_tree(v) for k, v in obj.items()}
    return np.array(obj.numpy(), dtype=np.float32)


def load_sources():
    cobra = numpy_tree(cobra_convert.read_checkpoint(TINY / "cobra/checkpoints/latest-checkpoint.pt"))
    siglip = numpy_tree(cobra_convert.read_checkpoint(TINY / "siglip/open_clip_pytorch_model.bin"))
    return {
        "cobra": cobra,
        "dino": numpy_tree(cobra_convert.read_checkpoint(TINY / "dino/model.safetensors")),
        "siglip": {k[len("visual.trunk."):]: v for k, v in siglip.items()
                   if k.startswith("visual.trunk.")},
        "siglip-timm": numpy_tree(cobra_convert.read_checkpoint(TINY / "siglip-timm/model.safetensors")),
    }


def tower_params(m):
    C = m["embed_dim"]
    return {"C": C, "F": int(C * m["mlp_ratio"]), "depth": m["depth"], "heads": m["num_heads"],
            "reg": m.get("reg_tokens", 0), "cls": m.get("class_token", True),
            "ls": m.get("init_values") is not None, "feature_layer": m["take_block"]}


def stored_mlp_width(F, outtype):
    """docs/model-format.md: q8_0 and q4_0 files pad a tower's MLP width up to a multiple of 32."""
    return F if outtype in ("f32", "f16") else (F + 31) // 32 * 32


def expected_tensors(man, src, outtype):
    """name -> (numpy shape, is matrix, float values, relative tolerance) per
    docs/model-format.md; only the resampled position embedding is not an exact copy, and the
    MLP's padding (stored_mlp_width) holds zeros."""
    G = man["image_size"] // man["patch_size"]
    out = {}

    def put(name, values, shape, matrix=False, rel_tol=0.0):
        out[name] = (tuple(shape), matrix, np.asarray(values).reshape(shape), rel_tol)

    def put_padded(name, values, shape, matrix):
        values = np.asarray(values)
        put(name, np.pad(values, [(0, n - m) for n, m in zip(shape, values.shape)]), shape, matrix)

    for t in ("dino", "siglip"):
        p, w = tower_params(man[t]), src[t]
        C, F = p["C"], p["F"]
        Fs = stored_mlp_width(F, outtype)
        put(f"{t}.patch_embd.weight", w["patch_embed.proj.weight"], (C, 3 * man["patch_size"] ** 2))
        put(f"{t}.patch_embd.bias", w["patch_embed.proj.bias"], (C,))
        if t == "dino":   # resampled by timm at load time; the reference's float32 result
            put(f"{t}.position_embd.weight", np.load(TINY / "golden/dino_pos_embed_resampled.npy"),
                (G * G, C), rel_tol=1e-6)
        else:
            put(f"{t}.position_embd.weight", w["pos_embed"], (G * G, C))
        if p["cls"]:
            put(f"{t}.class_embd", w["cls_token"], (C,))
        if p["reg"]:
            put(f"{t}.reg_embd", w["reg_token"], (p["reg"], C))
        for i in range(p["feature_layer"] + 1):
            b, d = f"blocks.{i}.", f"{t}.blk.{i}."
            for name, key, shape, matrix in [
                    ("ln1.weight", "norm1.weight", (C,), False), ("ln1.bias", "norm1.bias", (C,), False),
                    ("attn_qkv.weight", "attn.qkv.weight", (3 * C, C), True),
                    ("attn_qkv.bias", "attn.qkv.bias", (3 * C,), False),
                    ("attn_out.weight", "attn.proj.weight", (C, C), True),
                    ("attn_out.bias", "attn.proj.bias", (C,), False),
                    ("ln2.weight", "norm2.weight", (C,), False), ("ln2.bias", "norm2.bias", (C,), False),
                    ("ffn_up.weight", "mlp.fc1.weight", (Fs, C), True),
                    ("ffn_up.bias", "mlp.fc1.bias", (Fs,), False),
                    ("ffn_down.weight", "mlp.fc2.weight", (C, Fs), True),
                    ("ffn_down.bias", "mlp.fc2.bias", (C,), False)]:
                put_padded(d + name, w[b + key], shape, matrix)
            if p["ls"]:
                put(d + "ls1.weight", w[b + "ls1.gamma"], (C,))
                put(d + "ls2.weight", w[b + "ls2.gamma"], (C,))

    pj, proj = man["projector"], src["cobra"]["model"]["projector"]
    dims = {0: (pj["hidden"], pj["fused_dim"]), 2: (pj["out"], pj["hidden"]), 4: (pj["out"], pj["out"])}
    for i, shape in dims.items():
        put(f"mm.{i}.weight", proj[f"projector.{i}.weight"], shape, True)
        put(f"mm.{i}.bias", proj[f"projector.{i}.bias"], shape[:1])

    llm, lm = man["llm"], src["cobra"]["model"]["llm_backbone"]
    d, di, ds, dc, r, V = (llm["d_model"], llm["d_inner"], llm["d_state"], llm["d_conv"],
                           llm["dt_rank"], llm["vocab_padded"])
    put("token_embd.weight", lm["llm.backbone.embedding.weight"], (V, d), True)
    put("output_norm.weight", lm["llm.backbone.norm_f.weight"], (d,))
    for i in range(llm["n_layer"]):
        s, m = f"llm.backbone.layers.{i}.", f"llm.backbone.layers.{i}.mixer."
        put(f"blk.{i}.attn_norm.weight", lm[s + "norm.weight"], (d,))
        put(f"blk.{i}.ssm_in.weight", lm[m + "in_proj.weight"], (2 * di, d), True)
        put(f"blk.{i}.ssm_conv1d.weight", lm[m + "conv1d.weight"], (di, dc))
        put(f"blk.{i}.ssm_conv1d.bias", lm[m + "conv1d.bias"], (di,))
        put(f"blk.{i}.ssm_x.weight", lm[m + "x_proj.weight"], (r + 2 * ds, di), True)
        put(f"blk.{i}.ssm_dt.weight", lm[m + "dt_proj.weight"], (di, r), True)
        put(f"blk.{i}.ssm_dt.bias", lm[m + "dt_proj.bias"], (di,))
        put(f"blk.{i}.ssm_a", -np.exp(lm[m + "A_log"].astype(np.float64)), (di, ds))
        put(f"blk.{i}.ssm_d", lm[m + "D"], (di,))
        put(f"blk.{i}.ssm_out.weight", lm[m + "out_proj.weight"], (d, di), True)
    return out


def expected_type(name, shape, matrix, outtype):
    """q4_0 files: Q4_0 for the LM layers' in_proj and out_proj, Q8_0 for other matrices."""
    if not matrix or outtype == "f32":
        return gguf_io.F32
    if outtype not in ("q8_0", "q4_0") or shape[-1] % 32:
        return gguf_io.F16
    if outtype == "q4_0" and re.fullmatch(r"blk\.\d+\.ssm_(in|out)\.weight", name):
        return gguf_io.Q4_0
    return gguf_io.Q8_0


U32, F32V, STR, BOOL, ARR = (gguf_io.T_UINT32, gguf_io.T_FLOAT32, gguf_io.T_STRING, gguf_io.T_BOOL,
                             gguf_io.T_ARRAY)


def expected_metadata(man, outtype):
    """key -> ((GGUF type, array element type), value); token arrays are checked separately."""
    cobra = json.loads((TINY / "cobra/config.json").read_text())["model"]
    dino_cfg = json.loads((TINY / "dino/config.json").read_text())
    clip_cfg = json.loads((TINY / "siglip/open_clip_config.json").read_text())
    kv = {
        "general.architecture": ((STR, None), "cobra"),
        "general.name": ((STR, None), cobra["model_id"]),
        "general.alignment": ((U32, None), 32),
        "general.file_type": ((U32, None), FILE_TYPES[outtype]),
        "cobra.arch_specifier": ((STR, None), cobra["arch_specifier"]),
        "cobra.vision_backbone_id": ((STR, None), cobra["vision_backbone_id"]),
        "cobra.llm_backbone_id": ((STR, None), cobra["llm_backbone_id"]),
        "cobra.image_resize_strategy": ((STR, None), "resize-naive"),
        "cobra.prompt_template": ((STR, None), "<|user|>\n{question}<|endoftext|>\n<|assistant|>\n"),
        "cobra.llm_max_length": ((U32, None), cobra["llm_max_length"]),
        "clip.vision.image_size": ((U32, None), man["image_size"]),
        "clip.vision.patch_size": ((U32, None), man["patch_size"]),
        "clip.vision.feature_order": ((ARR, STR), ["dino", "siglip"]),
        "clip.projector_type": ((STR, None), "fused-gelu-mlp"),
    }
    norm = {"dino": dino_cfg["pretrained_cfg"], "siglip": clip_cfg["preprocess_cfg"]}
    arch = {"dino": dino_cfg["architecture"],
            "siglip": clip_cfg["model_cfg"]["vision_cfg"]["timm_model_name"]}
    for t in ("dino", "siglip"):
        p, k = tower_params(man[t]), f"clip.{t}."
        kv.update({
            k + "embedding_length": ((U32, None), p["C"]),
            k + "feed_forward_length": ((U32, None), stored_mlp_width(p["F"], outtype)),
            k + "attention.head_count": ((U32, None), p["heads"]),
            k + "attention.layer_norm_epsilon": ((F32V, None), float(np.float32(1e-6))),
            k + "block_count": ((U32, None), p["depth"]),
            k + "feature_layer": ((U32, None), p["feature_layer"]),
            k + "n_register_tokens": ((U32, None), p["reg"]),
            k + "has_class_token": ((BOOL, None), p["cls"]),
            k + "image_mean": ((ARR, F32V), [float(np.float32(v)) for v in norm[t]["mean"]]),
            k + "image_std": ((ARR, F32V), [float(np.float32(v)) for v in norm[t]["std"]]),
            k + "architecture": ((STR, None), arch[t]),
        })
    llm = man["llm"]
    kv.update({
        "mamba.context_length": ((U32, None), cobra["llm_max_length"]),
        "mamba.embedding_length": ((U32, None), llm["d_model"]),
        "mamba.block_count": ((U32, None), llm["n_layer"]),
        "mamba.feed_forward_length": ((U32, None), 0),
        "mamba.attention.head_count": ((U32, None), 0),
        "mamba.ssm.conv_kernel": ((U32, None), llm["d_conv"]),
        "mamba.ssm.inner_size": ((U32, None), llm["d_inner"]),
        "mamba.ssm.state_size": ((U32, None), llm["d_state"]),
        "mamba.ssm.time_step_rank": ((U32, None), llm["dt_rank"]),
        "mamba.attention.layer_norm_rms_epsilon": ((F32V, None), float(np.float32(llm["rms_eps"]))),
        "mamba.vocab_size": ((U32, None), llm["vocab_padded"]),
        "tokenizer.ggml.model": ((STR, None), "gpt2"),
        "tokenizer.ggml.pre": ((STR, None), "gpt-2"),
        "tokenizer.ggml.bos_token_id": ((U32, None), 0),
        "tokenizer.ggml.eos_token_id": ((U32, None), 0),
        "tokenizer.ggml.unknown_token_id": ((U32, None), 0),
        "tokenizer.ggml.padding_token_id": ((U32, None), 0),
        "tokenizer.ggml.add_bos_token": ((BOOL, None), False),
        "tokenizer.ggml.normalizer": ((STR, None), "NFC"),
    })
    return kv


# ---------------------------------------------------------------------------------------------
# Checks on one converted file
# ---------------------------------------------------------------------------------------------

def ref_q4_0_block(x):
    """One block of 32 float32 values as ggml's quantize_row_q4_0_ref makes it (18 bytes), one
    value at a time in float32 scalars: m = the first value of largest magnitude, d = m / -8,
    q = min(15, (int8)(x * (1 / d) + 8.5)), low nibbles elements 0..15."""
    m = np.float32(0)
    for v in x:
        if abs(v) > abs(m):
            m = v
    d = m / np.float32(-8)
    inv = np.float32(1) / d if d != 0 else np.float32(0)
    q = [min(15, int(v * inv + np.float32(8.5))) for v in x]
    return np.float16(d).tobytes() + bytes(q[j] | q[16 + j] << 4 for j in range(16))


def values_match(info, expected, rel_tol):
    """(ok, detail): F32 exact (or within rel_tol of max |ref|), F16 = IEEE round-to-nearest of the
    source, Q8_0 ggml's scales and every value within half a quantisation step, Q4_0 the bytes of
    ggml's reference quantisation."""
    got = info.numpy()
    ref = np.asarray(expected, dtype=np.float32)
    if info.type == gguf_io.Q4_0:
        want = b"".join(ref_q4_0_block(b) for b in ref.reshape(-1, 32))
        bad = [i for i in range(0, len(want), 18) if bytes(info.raw[i:i + 18]) != want[i:i + 18]]
        return not bad, f"{len(bad)} blocks differ, first at byte {bad[:1]}"
    if info.type == gguf_io.F32:
        rel = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)
        return bool(rel <= rel_tol), f"relative error {rel:.3g} > {rel_tol}"
    if info.type == gguf_io.F16:
        return np.array_equal(got, ref.astype(np.float16).astype(np.float32)), "not f16-rounded"
    blocks = ref.reshape(-1, 32)
    d = gguf_io.q8_0_scales(info.raw)
    want_d = (np.abs(blocks).max(axis=1) / np.float32(127)).astype(np.float16).astype(np.float32)
    if not np.array_equal(d, want_d):
        return False, "block scales differ from max|x|/127"
    # the stored scale is f16-rounded (relative 2^-11); q (up to 127) was found with the f32 scale
    bound = d * (0.5 + 127 * 2.0 ** -11) * (1 + 1e-6)
    err = np.abs(got.reshape(-1, 32) - blocks)
    worst = (err / np.maximum(d, 1e-30)[:, None]).max()
    return bool((err <= bound[:, None]).all()), f"max error/d {worst:.3f}"


def check_tokenizer(tag, kv):
    tok = json.loads(TOKENIZER.read_text())
    vocab, added = tok["model"]["vocab"], tok["added_tokens"]
    n = 1 + max(list(vocab.values()) + [a["id"] for a in added])
    tokens, types = kv.get("tokenizer.ggml.tokens", []), kv.get("tokenizer.ggml.token_type", [])
    check(f"{tag}: token list covers ids 0..{n - 1}", len(tokens) == n and len(types) == n,
          f"{len(tokens)} tokens, {len(types)} types")
    if len(tokens) != n or len(types) != n:
        return
    added_ids = {a["id"]: a for a in added}
    bad = [i for t, i in vocab.items() if i not in added_ids and (tokens[i], types[i]) != (t, 1)]
    check(f"{tag}: vocab tokens with type 1", not bad, f"first bad id {bad[:1]}")
    bad = [i for i, a in added_ids.items()
           if (tokens[i], types[i]) != (a["content"], 3 if a["special"] else 4)]
    check(f"{tag}: added tokens with type 3 (special) / 4", not bad, f"bad ids {bad[:5]}")
    defined = set(vocab.values()) | set(added_ids)
    bad = [i for i in range(n) if i not in defined and (tokens[i], types[i]) != (f"[PAD{i}]", 5)]
    check(f"{tag}: undefined ids are [PAD{{id}}] type 5", not bad, f"bad ids {bad[:5]}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    check(f"{tag}: merges in rank order", kv.get("tokenizer.ggml.merges") == merges)
    check(f"{tag}: chat template present", "<|assistant|>" in kv.get("tokenizer.chat_template", ""))


def check_file(tag, path, outtype, man, expected):
    r = gguf_io.GGUFReader(path)
    check(f"{tag}: parses as GGUF v3, data aligned to 32", r.data_start % 32 == 0)
    want_kv = expected_metadata(man, outtype)
    array_keys = {"tokenizer.ggml.tokens": (ARR, STR), "tokenizer.ggml.token_type": (ARR, gguf_io.T_INT32),
                  "tokenizer.ggml.merges": (ARR, STR), "tokenizer.chat_template": (STR, None)}
    extra = set(r.kv) - set(want_kv) - set(array_keys)
    missing = set(want_kv) - set(r.kv)
    check(f"{tag}: metadata key set", not extra and not missing and set(array_keys) <= set(r.kv),
          f"extra {sorted(extra)}, missing {sorted(missing)}")
    for key, (vtype, value) in want_kv.items():
        if key in r.kv:
            check(f"{tag}: {key} = {value!r}", r.kv_types[key] == vtype and r.kv[key] == value,
                  f"got {r.kv[key]!r} type {r.kv_types[key]}")
    for key, vtype in array_keys.items():
        check(f"{tag}: {key} type", r.kv_types.get(key) == vtype, f"got {r.kv_types.get(key)}")
    check_tokenizer(tag, r.kv)

    extra, missing = set(r.tensors) - set(expected), set(expected) - set(r.tensors)
    check(f"{tag}: tensor set", not extra and not missing,
          f"extra {sorted(extra)[:5]}, missing {sorted(missing)[:5]}")
    for name, (shape, matrix, values, rel_tol) in expected.items():
        info = r.tensors.get(name)
        if info is None:
            continue
        want_type = expected_type(name, shape, matrix, outtype)
        ok = check(f"{tag}: {name} ne {list(shape[::-1])} {gguf_io.TYPE_NAMES[want_type]}",
                   info.shape == shape and info.type == want_type,
                   f"got ne {list(info.ne)} type {info.type}")
        if ok:
            ok, detail = values_match(info, values, rel_tol)
            check(f"{tag}: {name} values", ok, detail)
    return r


def same_tensors(a, b):
    """Names of tensors whose bytes, shape or type differ between two readers (or are missing)."""
    names = set(a.tensors) | set(b.tensors)
    return sorted(n for n in names if n not in a.tensors or n not in b.tensors
                  or a.tensors[n].ne != b.tensors[n].ne or a.tensors[n].type != b.tensors[n].type
                  or not np.array_equal(a.tensors[n].raw, b.tensors[n].raw))


# ---------------------------------------------------------------------------------------------
# Checkpoints written here (a PyTorch zip/pickle without torch)
# ---------------------------------------------------------------------------------------------

def _fake_torch():
    """Module objects named like torch's, so the stdlib pickler writes the same globals torch.save
    does (torch._utils._rebuild_tensor_v2, torch.FloatStorage)."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"

    class FloatStorage:
        pass
    FloatStorage.__module__ = "torch"
    FloatStorage.__qualname__ = "FloatStorage"
    torch.FloatStorage, torch._utils, utils._rebuild_tensor_v2 = FloatStorage, utils, _rebuild_tensor_v2
    return torch, utils


class Strided:
    """A tensor to save as `size` and `stride` over the flat `storage` (contiguous by default)."""

    def __init__(self, storage, size, stride):
        self.storage = np.ascontiguousarray(storage, dtype="<f4").reshape(-1)
        self.size, self.stride = tuple(size), tuple(stride)

    @classmethod
    def contiguous(cls, array):
        return cls(array, array.shape, tuple(s // array.itemsize for s in array.strides))


class _Tensor:
    def __init__(self, strided, rebuild):
        self.t, self.rebuild = strided, rebuild

    def __reduce__(self):
        return (self.rebuild, (_StorageRef(self.t.storage), 0, self.t.size, self.t.stride, False,
                               collections.OrderedDict()))


class _StorageRef:
    def __init__(self, array):
        self.array = array


def write_torch_zip(path, obj, archive="archive"):
    """Save `obj` (dicts of float32 arrays and anything picklable) in torch.save's zip layout."""
    torch, utils = _fake_torch()
    saved = {m: sys.modules.get(m) for m in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    storages = []

    def wrap(o):
        if isinstance(o, dict):   # as state_dict() makes them: OrderedDict with _metadata
            d = collections.OrderedDict((k, wrap(v)) for k, v in o.items())
            d._metadata = collections.OrderedDict({"": {"version": 1}})
            return d
        if isinstance(o, np.ndarray):
            o = Strided.contiguous(np.ascontiguousarray(o, dtype="<f4"))
        if isinstance(o, Strided):
            return _Tensor(o, utils._rebuild_tensor_v2)
        return o

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _StorageRef):
                storages.append(o.array)
                return ("storage", torch.FloatStorage, str(len(storages) - 1), "cpu", o.array.size)
            return None

    try:
        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump(wrap(obj))
    finally:
        for m, mod in saved.items():
            if mod is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = mod
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", buf.getvalue())
        zf.writestr(f"{archive}/byteorder", "little")
        for i, array in enumerate(storages):
            zf.writestr(f"{archive}/data/{i}", array.tobytes())


def write_safetensors(path, tensors):
    """name -> (safetensors dtype, little-endian array of that dtype's bytes)."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, array) in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header).encode()
    Path(path).write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def cobra_folder(tmp, name, checkpoint):
    """A copy of the fixture's Cobra folder holding `checkpoint` (a picklable object)."""
    folder = tmp / name
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(TINY / "cobra/config.json", folder / "config.json")
    write_torch_zip(folder / "checkpoints/latest-checkpoint.pt", checkpoint)
    return folder


def with_llm(src, llm):
    return {"model": {"projector": src["cobra"]["model"]["projector"], "llm_backbone": llm}}


# ---------------------------------------------------------------------------------------------
# Test groups
# ---------------------------------------------------------------------------------------------

def test_outputs(models, tmp, man, src, expected):
    """expected: expected_tensors per outtype."""
    readers = {}
    for outtype in OUTTYPES:
        readers[outtype] = check_file(f"open_clip {outtype}", models / f"tiny-{outtype}.gguf",
                                      outtype, man, expected[outtype])
    for outtype in OUTTYPES:
        out = tmp / f"timm-{outtype}.gguf"
        rc, err = convert(out, siglip=TINY / "siglip-timm", outtype=outtype)
        if check(f"timm SigLIP packaging converts ({outtype})", rc == 0, err.strip()):
            r = check_file(f"timm {outtype}", out, outtype, man, expected[outtype])
            diff = same_tensors(r, readers[outtype])
            check(f"both SigLIP packagings give identical tensors ({outtype})", not diff, str(diff[:5]))


def test_mlp_padding(models, man):
    """A tower MLP width that is not a multiple of 32 is padded in q8_0/q4_0 files, so that
    ffn_down is Q8_0 (not F16), and left as it is in f32/f16 files."""
    odd = [t for t in ("dino", "siglip") if tower_params(man[t])["F"] % 32]
    if not check("a fixture tower has an MLP width that is not a multiple of 32", odd):
        return
    for outtype in OUTTYPES:
        r = gguf_io.GGUFReader(models / f"tiny-{outtype}.gguf")
        for t in odd:
            F = tower_params(man[t])["F"]
            Fs = r.kv[f"clip.{t}.feed_forward_length"]
            down = r.tensors[f"{t}.blk.0.ffn_down.weight"]
            if outtype in ("f32", "f16"):
                check(f"{outtype}: {t} MLP width {F} kept", Fs == F and down.ne[0] == F,
                      f"key {Fs}, ffn_down ne {list(down.ne)}")
                continue
            check(f"{outtype}: {t} MLP width {F} padded to a multiple of 32, ffn_down Q8_0",
                  Fs % 32 == 0 and F < Fs < F + 32 and down.ne[0] == Fs
                  and down.type == gguf_io.Q8_0,
                  f"key {Fs}, ffn_down ne {list(down.ne)} type {down.type}")
            up, bias = r.tensors[f"{t}.blk.0.ffn_up.weight"], r.tensors[f"{t}.blk.0.ffn_up.bias"]
            check(f"{outtype}: {t} padded hidden units are zero in fc1, its bias and fc2",
                  not up.numpy()[F:].any() and not bias.numpy()[F:].any()
                  and not down.numpy()[:, F:].any())


def test_llama_cpp_model(models, tmp):
    """tools/llama_cpp_model.py (the llama.cpp side of the benchmarks): the language model's
    tensors byte for byte, no tower or projector, llama.cpp's `mamba` architecture, and the
    per-token tokenizer arrays as long as the embedding."""
    for outtype in ("q8_0", "q4_0"):
        src = gguf_io.GGUFReader(models / f"tiny-{outtype}.gguf")
        out = tmp / f"tiny-{outtype}-mamba.gguf"
        subprocess.run([sys.executable, str(ROOT / "tools" / "llama_cpp_model.py"),
                        str(models / f"tiny-{outtype}.gguf"), str(out)], check=True)
        r = gguf_io.GGUFReader(out)
        lm = [n for n in src.tensors if n.startswith(("token_embd.", "output", "blk."))]
        check(f"{outtype} -> llama.cpp: architecture mamba, no clip keys",
              r.kv["general.architecture"] == "mamba"
              and not any(k.startswith("clip.") for k in r.kv))
        check(f"{outtype} -> llama.cpp: the language model's tensors, bytes and types unchanged",
              list(r.tensors) == lm and all(
                  r.tensors[n].type == src.tensors[n].type and r.tensors[n].ne == src.tensors[n].ne
                  and np.array_equal(r.tensors[n].raw, src.tensors[n].raw) for n in lm))
        n_vocab = src.tensors["token_embd.weight"].ne[1]
        check(f"{outtype} -> llama.cpp: {n_vocab} tokens, as many as embedding rows",
              len(r.kv["tokenizer.ggml.tokens"]) == n_vocab
              and len(r.kv["tokenizer.ggml.token_type"]) == n_vocab
              and r.kv["tokenizer.ggml.tokens"] == src.kv["tokenizer.ggml.tokens"][:n_vocab])


def test_sources_agree(src):
    """The zip/pickle reader and the safetensors reader see the same SigLIP weights."""
    a, b = src["siglip"], src["siglip-timm"]
    diff = sorted(k for k in set(a) | set(b) if k not in a or k not in b or not np.array_equal(a[k], b[k]))
    check("open_clip .bin and timm .safetensors SigLIP tensors read identically", not diff, str(diff[:5]))


# torch 2.11 F.interpolate(f.reshape(1, 1, 1, n), size=(1, m), mode="bicubic", antialias=True,
# align_corners=False) in float64 of f[j] = cos(0.37 j) + j / n: the real model's 37 -> 27, a strong
# downscale and an upscale, where the window arithmetic matters (the fixture's 5 -> 4 cannot tell)
TORCH_AA_BICUBIC = {
    (37, 27): [0.998345114522187, 0.880514992644064, 0.550722810946992, 0.089255127636476,
               -0.341488436449907, -0.669860223379883, -0.769769462905712, -0.628310798940387,
               -0.248137957679535, 0.256921410086233, 0.785062538759055, 1.221206989484696,
               1.437525542928069, 1.417044468785789, 1.151588374933416, 0.747015853022295,
               0.272437877143244, -0.104873748613079, -0.301549951884425, -0.249937740788063,
               0.035479406641679, 0.505413603029978, 1.05398585298165, 1.519196654948393,
               1.842046369581716, 1.909675761430314, 1.746101824901232],
    (24, 9): [0.958996391282126, 0.42158843500487, -0.387737056787429, -0.612123285351381,
              0.041583618337167, 1.08882066409916, 1.688322036263545, 1.387748317789981,
              0.620544367277388],
    (7, 16): [0.992841219359762, 1.008398510296763, 1.047658122425185, 1.075488319979788,
              1.065457749813272, 1.033314590798224, 0.982025469573786, 0.912139108894471,
              0.831294683115517, 0.737918899684836, 0.641479900047546, 0.541665418940613,
              0.445135716517555, 0.346690433173285, 0.269967962762254, 0.234870388088199],
}


def test_resampler():
    for (n, m), want in TORCH_AA_BICUBIC.items():
        j = np.arange(n)
        got = cobra_convert.aa_bicubic_matrix(n, m) @ (np.cos(0.37 * j) + j / n)
        err = np.abs(got - want).max()
        check(f"antialiased bicubic {n} -> {m} matches torch (max error {err:.1e} < 1e-12)", err < 1e-12)


def test_quantizer():
    """ggml's quantize_row_q8_0_ref on hand-made blocks: d = max|x| / 127, ties away from zero,
    an all-zero block gets d = 0."""
    ties = np.zeros(32, dtype=np.float32)
    ties[:7] = [127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 126.49]
    blocks = gguf_io.quantize_q8_0(np.stack([ties, np.zeros(32, np.float32)]))
    want_q = np.zeros(32, dtype=np.int8)
    want_q[:7] = [127, 1, 2, 3, -1, -3, 126]
    check("Q8_0 block scale max|x|/127 as f16", blocks["d"].tolist() == [1.0, 0.0])
    check("Q8_0 rounds ties away from zero", np.array_equal(blocks["qs"][0], want_q),
          str(blocks["qs"][0][:7]))
    check("Q8_0 all-zero block quantises to zeros", not blocks["qs"][1].any())


def test_quantizer_q4_0():
    """ggml's quantize_row_q4_0_ref on hand-made blocks: the scale takes the sign of the first value
    of largest magnitude (that value becomes -8), x / d + 8.5 truncated (halves round up), 16
    clamped to 15, an all-zero block is all 8s with d = 0."""
    a = np.zeros(32, dtype=np.float32)
    a[:8] = [-16.0, 16.0, 3.0, -3.0, 1.0, -1.0, 5.0, 0.5]   # d = 2, 1 / d exact
    a[16:19] = [-15.0, 14.5, 7.0]
    b = np.zeros(32, dtype=np.float32)
    b[:2] = [8.0, -8.0]                                        # first wins: d = -1
    blocks = gguf_io.quantize_q4_0(np.stack([a, b, np.zeros(32, np.float32)]))
    q = np.concatenate([blocks["qs"] & 15, blocks["qs"] >> 4], axis=1).astype(int)
    want_a = np.full(32, 8)
    want_a[:8] = [0, 16, 10, 7, 9, 8, 11, 8]                   # 16 before the clamp
    want_a[16:19] = [1, 15, 12]                                # 14.5 / 2 + 8.5 = 15.75
    want_a = np.minimum(want_a, 15)
    check("Q4_0 scale is -(first largest-magnitude value) / 8 as f16",
          blocks["d"].tolist() == [2.0, -1.0, 0.0], str(blocks["d"]))
    check("Q4_0 values: halves round up, 16 clamps to 15", np.array_equal(q[0], want_a), str(q[0]))
    check("Q4_0 first of equal magnitudes sets the sign", q[1][:2].tolist() == [0, 15], str(q[1][:2]))
    check("Q4_0 all-zero block is all 8s", (q[2] == 8).all(), str(q[2]))
    got = b"".join(ref_q4_0_block(x) for x in (a, b, np.zeros(32, np.float32)))
    check("Q4_0 quantiser equals the scalar reference", got == blocks.tobytes())


def test_source_dtypes(tmp):
    """F16 and BF16 sources read back as their float values."""
    values = (np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 11.5) / 8   # exact in f16 and bf16
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")
    write_safetensors(tmp / "dtypes.safetensors", {"half": ("F16", values.astype("<f2")),
                                                   "brain": ("BF16", bf16)})
    read = cobra_convert.read_checkpoint(tmp / "dtypes.safetensors")
    for name in ("half", "brain"):
        got = np.asarray(read[name].numpy(), dtype=np.float32)
        check(f"safetensors {read[name].dtype} source reads as its values",
              got.shape == values.shape and np.array_equal(got, values))


def test_lm_head(tmp, src, base):
    lm = src["cobra"]["model"]["llm_backbone"]
    check("fixture's lm_head equals its embedding (so the dedup check means something)",
          np.array_equal(lm["llm.lm_head.weight"], lm["llm.backbone.embedding.weight"]))
    check("lm_head equal to the embedding is not stored", "output.weight" not in base.tensors)
    head = lm["llm.lm_head.weight"].copy()
    head[1, 0] += 1.0
    folder = cobra_folder(tmp, "cobra-head", with_llm(src, {**lm, "llm.lm_head.weight": head}))
    rc, err = convert(tmp / "head.gguf", cobra=folder)
    if check("checkpoint with a different lm_head converts", rc == 0, err.strip()):
        r = gguf_io.GGUFReader(tmp / "head.gguf")
        out = r.tensors.get("output.weight")
        check("a different lm_head is stored as output.weight with its values",
              out is not None and np.array_equal(out.numpy(), head))


def test_progress(tmp):
    rc, err, out = convert(tmp / "progress.gguf", outtype="q8_0", quiet=False)
    lines = out.splitlines()
    groups = [g for g in ("dino", "siglip", "projector", "mamba")
              if not any(line.startswith(g + ":") and "tensors" in line for line in lines)]
    check("without --quiet: a line per tensor group", rc == 0 and not groups, f"missing {groups}")
    summary = lines[-1] if lines else ""
    check("without --quiet: a summary of params, bytes and types",
          all(w in summary for w in ("params", "bytes", "F32", "F16", "Q8_0")), summary)


def test_open_clip_safetensors(tmp, base):
    """open_clip folders also ship open_clip_model.safetensors (same visual.trunk. keys)."""
    folder = tmp / "siglip-open-clip-safetensors"
    folder.mkdir()
    shutil.copy(TINY / "siglip/open_clip_config.json", folder)
    state = numpy_tree(cobra_convert.read_checkpoint(TINY / "siglip/open_clip_pytorch_model.bin"))
    write_safetensors(folder / "open_clip_model.safetensors",
                      {k: ("F32", v.astype("<f4")) for k, v in state.items()})
    rc, err = convert(tmp / "oc-st.gguf", siglip=folder)
    if check("open_clip packaging with open_clip_model.safetensors converts", rc == 0, err.strip()):
        diff = same_tensors(gguf_io.GGUFReader(tmp / "oc-st.gguf"), base)
        check("open_clip safetensors gives the same tensors", not diff, str(diff[:5]))


def test_spellings(tmp, src, base):
    lm = src["cobra"]["model"]["llm_backbone"]
    spellings = {
        "mamba_ssm": {k[len("llm."):]: v for k, v in lm.items()},
        "HF": {k[len("llm."):].replace("backbone.embedding.", "backbone.embeddings."): v
               for k, v in lm.items()},
    }
    for name, llm in spellings.items():
        folder = cobra_folder(tmp, f"cobra-{name}", with_llm(src, llm))
        rc, err = convert(tmp / f"{name}.gguf", cobra=folder)
        if check(f"{name} key spelling converts", rc == 0, err.strip()):
            diff = same_tensors(gguf_io.GGUFReader(tmp / f"{name}.gguf"), base)
            check(f"{name} key spelling gives the same tensors", not diff, str(diff[:5]))


def expect_failure(name, out, must_name, **folders):
    rc, err = convert(out, **folders)
    lines = err.strip().splitlines()
    check(f"{name}: exit 1, one line naming {must_name!r}",
          rc == 1 and len(lines) == 1 and must_name in lines[0], f"rc {rc}, stderr {err.strip()!r}")
    check(f"{name}: no output file left", not out.exists() and not Path(str(out) + ".partial").exists())


def test_errors(tmp, src):
    lm = src["cobra"]["model"]["llm_backbone"]
    marker = tmp / "pickle-ran-code"
    evil = {"model": {"projector": src["cobra"]["model"]["projector"],
                      "llm_backbone": _Evil(f"touch {marker}")}}
    expect_failure("pickle with a disallowed global", tmp / "e1.gguf", "system is not allowed",
                   cobra=cobra_folder(tmp, "cobra-evil", evil))
    check("disallowed global was never called", not marker.exists())

    missing = {k: v for k, v in lm.items() if k != "llm.backbone.layers.1.mixer.D"}
    expect_failure("missing tensor", tmp / "e2.gguf", "missing tensor backbone.layers.1.mixer.D",
                   cobra=cobra_folder(tmp, "cobra-missing", with_llm(src, missing)))

    x_proj = "llm.backbone.layers.1.mixer.x_proj.weight"
    misshapen = {**lm, x_proj: lm[x_proj][:-1]}
    expect_failure("misshapen tensor", tmp / "e3.gguf", "backbone.layers.1.mixer.x_proj.weight has shape",
                   cobra=cobra_folder(tmp, "cobra-misshapen", with_llm(src, misshapen)))

    rows, cols = lm[x_proj].shape
    transposed = {**lm, x_proj: Strided(lm[x_proj].T, (rows, cols), (1, rows))}
    expect_failure("non-contiguous tensor", tmp / "e6.gguf", "non-contiguous",
                   cobra=cobra_folder(tmp, "cobra-strided", with_llm(src, transposed)))

    dino = tmp / "dino-nofile"
    dino.mkdir()
    shutil.copy(TINY / "dino/config.json", dino / "config.json")
    expect_failure("missing file", tmp / "e4.gguf", "model.safetensors: missing file", dino=dino)

    unknown = tmp / "dino-unknown"
    unknown.mkdir()
    cfg = json.loads((TINY / "dino/config.json").read_text())
    cfg["architecture"] = "vit_mystery_patch14"
    del cfg["model_args"]
    (unknown / "config.json").write_text(json.dumps(cfg))
    shutil.copy(TINY / "dino/model.safetensors", unknown / "model.safetensors")
    expect_failure("unknown architecture", tmp / "e5.gguf", "unknown architecture vit_mystery_patch14",
                   dino=unknown)


class _Evil:
    """Pickles as a call of os.system: the converter must refuse to resolve it."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def main():
    man = json.loads((TINY / "golden/manifest.json").read_text())
    src = load_sources()
    expected = {outtype: expected_tensors(man, src, outtype) for outtype in OUTTYPES}
    with tempfile.TemporaryDirectory(prefix="test-convert-") as t:
        tmp = Path(t)
        models = Path(os.environ["COBRA_TEST_MODELS"]) if "COBRA_TEST_MODELS" in os.environ else tmp
        if "COBRA_TEST_MODELS" not in os.environ:
            for outtype in OUTTYPES:
                convert(models / f"tiny-{outtype}.gguf", outtype=outtype)
        guarded("outputs", test_outputs, models, tmp, man, src, expected)
        guarded("MLP padding", test_mlp_padding, models, man)
        guarded("llama.cpp model", test_llama_cpp_model, models, tmp)
        guarded("source readers", test_sources_agree, src)
        guarded("resampler", test_resampler)
        guarded("quantizer", test_quantizer)
        guarded("Q4_0 quantizer", test_quantizer_q4_0)
        guarded("source dtypes", test_source_dtypes, tmp)
        base = gguf_io.GGUFReader(models / "tiny-f32.gguf")
        guarded("lm_head", test_lm_head, tmp, src, base)
        guarded("key spellings", test_spellings, tmp, src, base)
        guarded("open_clip safetensors", test_open_clip_safetensors, tmp, base)
        guarded("progress", test_progress, tmp)
        guarded("errors", test_errors, tmp, src)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
