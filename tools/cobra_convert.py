#!/usr/bin/env python3
"""Convert the released Cobra checkpoints (Cobra .pt, timm DINOv2, timm/open_clip SigLIP,
tokenizer.json) into the single GGUF v3 file described in docs/model-format.md.

Python 3 + numpy only: PyTorch zip checkpoints are read with a restricted unpickler that can only
rebuild tensors, and every tensor is memory-mapped from its source file, so converting the 12 GB
checkpoint needs about one output tensor of memory.
"""

import argparse
import json
import os
import pickle
import re
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gguf_io  # noqa: E402
from gguf_io import F16, F32, Q4_0, Q8_0, T_FLOAT32, T_INT32, T_STRING  # noqa: E402


class ConvertError(Exception):
    """A problem with the inputs; main() prints it as one line and exits 1."""


# ---------------------------------------------------------------------------------------------
# Lazily mapped source tensors
# ---------------------------------------------------------------------------------------------

_NUMPY_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}


class SourceTensor:
    """A tensor stored contiguously at byte `offset` of `path`; values are mapped on demand."""

    def __init__(self, path, offset, dtype, shape):
        self.path = path
        self.offset = offset
        self.dtype = dtype          # "F32", "F16" or "BF16"
        self.shape = tuple(int(n) for n in shape)

    def numpy(self):
        """The values, memory-mapped (F32, F16) or converted to float32 (BF16)."""
        count = int(np.prod(self.shape, dtype=np.int64))
        if count == 0:
            return np.zeros(self.shape, dtype=np.float32)
        raw = np.memmap(self.path, dtype=_NUMPY_DTYPES[self.dtype], mode="r",
                        offset=self.offset, shape=(count,)).reshape(self.shape)
        if self.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw


def read_safetensors(path):
    """name -> SourceTensor for a .safetensors file (8-byte header length, JSON header, data)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ConvertError(f"{path}: not a safetensors file (too short)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise ConvertError(f"{path}: not a safetensors file (header length {header_len})")
        try:
            header = json.loads(f.read(header_len))
        except ValueError as e:
            raise ConvertError(f"{path}: bad safetensors header: {e}") from None
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in _NUMPY_DTYPES:
            raise ConvertError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        begin, end = info["data_offsets"]
        t = SourceTensor(path, 8 + header_len + begin, dtype, info["shape"])
        itemsize = np.dtype(_NUMPY_DTYPES[dtype]).itemsize
        if end - begin != itemsize * int(np.prod(t.shape, dtype=np.int64)) or 8 + header_len + end > size:
            raise ConvertError(f"{path}: tensor {name} data does not fit its shape or the file")
        tensors[name] = t
    return tensors


# PyTorch's legacy typed-storage class names (what torch.save pickles) -> source dtype
_TORCH_STORAGES = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16"}


class _StorageType:
    def __init__(self, name):
        self.name = name


class _StateDict(dict):
    """Stands in for OrderedDict: a dict that accepts the `_metadata` attribute that
    state_dict() attaches and the pickle restores with BUILD."""


class _Storage:
    def __init__(self, path, offset, dtype, numel):
        self.path, self.offset, self.dtype, self.numel = path, offset, dtype, numel


def _zip_member_data_offset(f, info):
    """File offset of a stored zip member's bytes (after its local header)."""
    f.seek(info.header_offset)
    local = f.read(30)
    if local[:4] != b"PK\x03\x04":
        raise ConvertError(f"{f.name}: bad zip local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _contiguous_strides(size):
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


class _TensorUnpickler(pickle.Unpickler):
    """Rebuilds only tensors (as SourceTensor) and plain containers; anything else is an error."""

    def __init__(self, file, path, storages):
        super().__init__(file)
        self.path = path
        self.storages = storages   # storage key -> _Storage

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self.rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, backward_hooks: data
        if module == "collections" and name == "OrderedDict":
            return _StateDict
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        raise ConvertError(f"{self.path}: unexpected pickle content: global {module}.{name} "
                           "is not allowed (only tensors can be loaded)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise ConvertError(f"{self.path}: unexpected pickle content: persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        dtype = _TORCH_STORAGES.get(storage_type.name)
        if dtype is None:
            raise ConvertError(f"{self.path}: unsupported tensor storage torch.{storage_type.name}")
        storage = self.storages.get(str(key))
        if storage is None:
            raise ConvertError(f"{self.path}: storage {key} missing from the archive")
        storage.dtype, storage.numel = dtype, numel
        return storage

    def rebuild_tensor(self, storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
        if not isinstance(storage, _Storage):
            raise ConvertError(f"{self.path}: unexpected pickle content: tensor without storage")
        size = tuple(size)
        live = [(n, s) for n, s in zip(size, stride) if n != 1]
        if live != [(n, s) for n, s in zip(size, _contiguous_strides(size)) if n != 1]:
            raise ConvertError(f"{self.path}: non-contiguous tensor (size {size}, stride {tuple(stride)})")
        count = int(np.prod(size, dtype=np.int64))
        if storage_offset + count > storage.numel:
            raise ConvertError(f"{self.path}: tensor runs past its storage")
        itemsize = np.dtype(_NUMPY_DTYPES[storage.dtype]).itemsize
        return SourceTensor(storage.path, storage.offset + storage_offset * itemsize,
                            storage.dtype, size)


def read_torch_zip(path):
    """The object of a PyTorch zip checkpoint, tensors as SourceTensor."""
    if not zipfile.is_zipfile(path):
        raise ConvertError(f"{path}: not a PyTorch zip checkpoint")
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        pickles = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ConvertError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][:-len("data.pkl")]
        if prefix + "byteorder" in zf.namelist() and zf.read(prefix + "byteorder") != b"little":
            raise ConvertError(f"{path}: big-endian checkpoints are not supported")
        storages = {}
        for info in zf.infolist():
            if info.filename.startswith(prefix + "data/"):
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ConvertError(f"{path}: member {info.filename} is compressed")
                storages[info.filename[len(prefix + "data/"):]] = _Storage(
                    path, _zip_member_data_offset(f, info), None, 0)
        with zf.open(pickles[0]) as pkl:
            try:
                return _TensorUnpickler(pkl, path, storages).load()
            except ConvertError:
                raise
            except Exception as e:  # a malformed pickle: report it, never run anything
                raise ConvertError(f"{path}: unexpected pickle content: {e}") from None


def read_checkpoint(path):
    """Tensors of a checkpoint file by its extension (.safetensors or a PyTorch zip)."""
    if not path.is_file():
        raise ConvertError(f"{path}: missing file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_torch_zip(path)


def read_json(path):
    if not path.is_file():
        raise ConvertError(f"{path}: missing file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise ConvertError(f"{path}: bad JSON: {e}") from None


def json_field(obj, keys, path):
    """obj[k0][k1]... or a ConvertError naming the file and the missing field."""
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            raise ConvertError(f"{path}: missing field {'.'.join(keys)}")
        obj = obj[k]
    return obj


class Weights:
    """A name -> SourceTensor map that fails with the file and tensor name on any mismatch."""

    def __init__(self, tensors, source):
        self.tensors = tensors
        self.source = source

    def __contains__(self, name):
        return name in self.tensors

    def get(self, name, shape=None):
        t = self.tensors.get(name)
        if not isinstance(t, SourceTensor):
            raise ConvertError(f"{self.source}: missing tensor {name}")
        if shape is not None and t.shape != tuple(shape):
            raise ConvertError(f"{self.source}: tensor {name} has shape {list(t.shape)}, "
                               f"expected {list(shape)}")
        return t

    def dims(self, name, ndim):
        """Shape of a tensor whose sizes define hyper-parameters, after checking its rank."""
        t = self.get(name)
        if len(t.shape) != ndim:
            raise ConvertError(f"{self.source}: tensor {name} has shape {list(t.shape)}, "
                               f"expected {ndim} dimensions")
        return t.shape

    def count_indexed(self, prefix):
        """1 + the largest N of tensors named `prefix`N.…, or 0."""
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        found = [int(m.group(1)) for m in map(pattern.match, self.tensors) if m]
        return max(found) + 1 if found else 0


# ---------------------------------------------------------------------------------------------
# Output tensors
# ---------------------------------------------------------------------------------------------

class OutTensor:
    """One GGUF tensor: numpy `shape`, whether it is a "matrix" (may change type), and how to make
    its float values from the mapped sources."""

    def __init__(self, name, shape, matrix, produce):
        self.name, self.shape, self.matrix, self.produce = name, tuple(shape), matrix, produce


def copied(name, src, shape=None, matrix=False):
    """A source tensor stored as-is, reshaped to `shape` (squeezing torch's leading 1s)."""
    shape = tuple(shape) if shape is not None else src.shape
    return OutTensor(name, shape, matrix, lambda: src.numpy().reshape(shape))


def zero_padded(name, src, shape, matrix=False):
    """A source tensor grown to `shape` with zeros after its values along each axis."""
    if tuple(shape) == src.shape:
        return copied(name, src, matrix=matrix)
    return OutTensor(name, shape, matrix,
                     lambda: np.pad(src.numpy(), [(0, n - m) for n, m in zip(shape, src.shape)]))


# ---------------------------------------------------------------------------------------------
# Position-embedding resampling (timm resample_abs_pos_embed = PyTorch antialiased bicubic)
# ---------------------------------------------------------------------------------------------

def _cubic(x, a=-0.5):
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def aa_bicubic_matrix(in_size, out_size):
    """[out, in] weights of F.interpolate(mode='bicubic', antialias=True, align_corners=False)
    along one axis, with the window arithmetic of PyTorch's _compute_weights_aa."""
    scale = in_size / out_size
    support = 2.0 * max(scale, 1.0)
    max_taps = 2 * int(np.ceil(support)) + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)      # int() truncates like the C++ cast
        xsize = min(max(min(int(center + support + 0.5), in_size) - xmin, 0), max_taps)
        w = _cubic((np.arange(xmin, xmin + xsize) - center + 0.5) * invscale)
        total = w.sum()
        weights[i, xmin:xmin + xsize] = w / total if total != 0 else w
    return weights


def resample_pos_embed(pos, grid):
    """[g*g, C] position embedding resampled to [grid*grid, C] in float64, returned as float32."""
    src = int(round(np.sqrt(pos.shape[0])))
    if src == grid:
        return np.array(pos, dtype=np.float32)
    w = aa_bicubic_matrix(src, grid)
    table = np.asarray(pos, dtype=np.float64).reshape(src, src, -1)
    out = np.einsum("ai,bj,ijc->abc", w, w, table)
    return out.reshape(grid * grid, -1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Vision towers
# ---------------------------------------------------------------------------------------------

# timm VisionTransformer defaults, for model_args that leave a field out
_TIMM_VIT_DEFAULTS = {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12,
                      "mlp_ratio": 4.0, "class_token": True, "reg_tokens": 0}

# The towers of the released model (timm vision_transformer.py model definitions)
KNOWN_TOWERS = {
    "vit_large_patch14_reg4_dinov2": {"patch_size": 14, "embed_dim": 1024, "depth": 24,
                                      "num_heads": 16, "mlp_ratio": 4.0, "class_token": True,
                                      "reg_tokens": 4},
    "vit_so400m_patch14_siglip_384": {"patch_size": 14, "embed_dim": 1152, "depth": 27,
                                      "num_heads": 16, "mlp_ratio": 3.7362, "class_token": False,
                                      "reg_tokens": 0},
}

LAYER_NORM_EPS = 1e-6


class Tower:
    """A vision tower's hyper-parameters, preprocessing constants and source weights."""

    def __init__(self, arch, hparams, mean, std, weights):
        self.arch = arch
        self.patch = int(hparams["patch_size"])
        self.width = int(hparams["embed_dim"])
        self.depth = int(hparams["depth"])
        self.heads = int(hparams["num_heads"])
        self.mlp = int(self.width * hparams["mlp_ratio"])   # timm: int(dim * mlp_ratio)
        self.class_token = bool(hparams["class_token"])
        self.reg_tokens = int(hparams["reg_tokens"] or 0)
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        self.weights = weights
        self.feature_layer = self.depth - 2


def tower_hparams(arch, model_args, config_path):
    """timm model_args (over timm's defaults or the known architecture), else the known table."""
    base = KNOWN_TOWERS.get(arch.split(".")[0])
    if model_args is None:
        if base is None:
            raise ConvertError(f"{config_path}: unknown architecture {arch} (no model_args)")
        return dict(base)
    hparams = dict(base or _TIMM_VIT_DEFAULTS)
    hparams.update(model_args)
    return hparams


def load_tower(folder):
    """A tower from a timm folder (config.json + model.safetensors) or an open_clip folder
    (open_clip_config.json + open_clip_model.safetensors or open_clip_pytorch_model.bin; vision
    keys under visual.trunk.)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConvertError(f"{folder}: missing folder")
    open_clip_cfg = folder / "open_clip_config.json"
    if open_clip_cfg.is_file():
        cfg = read_json(open_clip_cfg)
        vision = json_field(cfg, ["model_cfg", "vision_cfg"], open_clip_cfg)
        arch = json_field(vision, ["timm_model_name"], open_clip_cfg)
        mean = json_field(cfg, ["preprocess_cfg", "mean"], open_clip_cfg)
        std = json_field(cfg, ["preprocess_cfg", "std"], open_clip_cfg)
        hparams = tower_hparams(arch, vision.get("model_args"), open_clip_cfg)
        path = folder / "open_clip_model.safetensors"
        if not path.is_file():
            path = folder / "open_clip_pytorch_model.bin"
        prefix = "visual.trunk."
        state = read_checkpoint(path)
        tensors = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    else:
        config = folder / "config.json"
        cfg = read_json(config)
        arch = json_field(cfg, ["architecture"], config)
        mean = json_field(cfg, ["pretrained_cfg", "mean"], config)
        std = json_field(cfg, ["pretrained_cfg", "std"], config)
        hparams = tower_hparams(arch, cfg.get("model_args"), config)
        path = folder / "model.safetensors"
        tensors = read_checkpoint(path)
    return Tower(arch, hparams, mean, std, Weights(tensors, path))


def stored_mlp_width(t, outtype):
    """The MLP hidden width as stored: when matrices are quantised (blocks of 32 along ne[0]), a
    width that is not a multiple of 32 is padded up to one, so that ffn_down (ne[0] = the width)
    is quantised instead of staying F16 (SigLIP so400m's 4304 -> 4320). The extra hidden units
    have zero fc1 rows and bias and zero fc2 columns: GELU(0) = 0, so they add nothing."""
    if outtype not in BLOCK_OUTTYPES:
        return t.mlp
    return -(-t.mlp // gguf_io.QK8_0) * gguf_io.QK8_0


def tower_tensors(t, prefix, grid, outtype):
    """The GGUF tensors of one tower, every source shape checked against its hyper-parameters."""
    w, C, F, P = t.weights, t.width, t.mlp, t.patch
    Fs = stored_mlp_width(t, outtype)
    depth_found = w.count_indexed("blocks.")
    if depth_found != t.depth:
        raise ConvertError(f"{w.source}: has {depth_found} blocks, the architecture says {t.depth}")
    out = [
        copied(f"{prefix}.patch_embd.weight", w.get("patch_embed.proj.weight", (C, 3, P, P)),
               (C, 3 * P * P)),
        copied(f"{prefix}.patch_embd.bias", w.get("patch_embed.proj.bias", (C,))),
    ]
    pos_shape = w.dims("pos_embed", 3)
    src_grid = int(round(np.sqrt(pos_shape[1])))
    pos = w.get("pos_embed", (1, src_grid * src_grid, C))
    out.append(OutTensor(f"{prefix}.position_embd.weight", (grid * grid, C), False,
                         lambda: resample_pos_embed(pos.numpy()[0], grid)))
    if t.class_token:
        out.append(copied(f"{prefix}.class_embd", w.get("cls_token", (1, 1, C)), (C,)))
    if t.reg_tokens:
        out.append(copied(f"{prefix}.reg_embd", w.get("reg_token", (1, t.reg_tokens, C)),
                          (t.reg_tokens, C)))
    layer_scale = "blocks.0.ls1.gamma" in w
    for i in range(t.feature_layer + 1):
        src, dst = f"blocks.{i}.", f"{prefix}.blk.{i}."
        # (name, source name, source shape, stored shape, matrix)
        parts = [("ln1.weight", "norm1.weight", (C,), (C,), False),
                 ("ln1.bias", "norm1.bias", (C,), (C,), False),
                 ("attn_qkv.weight", "attn.qkv.weight", (3 * C, C), (3 * C, C), True),
                 ("attn_qkv.bias", "attn.qkv.bias", (3 * C,), (3 * C,), False),
                 ("attn_out.weight", "attn.proj.weight", (C, C), (C, C), True),
                 ("attn_out.bias", "attn.proj.bias", (C,), (C,), False),
                 ("ln2.weight", "norm2.weight", (C,), (C,), False),
                 ("ln2.bias", "norm2.bias", (C,), (C,), False),
                 ("ffn_up.weight", "mlp.fc1.weight", (F, C), (Fs, C), True),
                 ("ffn_up.bias", "mlp.fc1.bias", (F,), (Fs,), False),
                 ("ffn_down.weight", "mlp.fc2.weight", (C, F), (C, Fs), True),
                 ("ffn_down.bias", "mlp.fc2.bias", (C,), (C,), False)]
        if layer_scale:
            parts += [("ls1.weight", "ls1.gamma", (C,), (C,), False),
                      ("ls2.weight", "ls2.gamma", (C,), (C,), False)]
        for dst_name, src_name, shape, stored, matrix in parts:
            out.append(zero_padded(dst + dst_name, w.get(src + src_name, shape), stored, matrix))
    return out


def image_size_from_id(vision_backbone_id, config_path):
    m = re.search(r"(\d+)px$", vision_backbone_id)
    if not m:
        raise ConvertError(f"{config_path}: vision_backbone_id {vision_backbone_id!r} "
                           "does not end in NNNpx")
    return int(m.group(1))


# ---------------------------------------------------------------------------------------------
# Cobra checkpoint: projector and Mamba
# ---------------------------------------------------------------------------------------------

def canonical_lm_key(key):
    """mamba_ssm spelling of a Cobra (llm. prefix), mamba_ssm or HF (backbone.embeddings) key."""
    if key.startswith("llm."):
        key = key[len("llm."):]
    if key.startswith("backbone.embeddings."):
        key = "backbone.embedding." + key[len("backbone.embeddings."):]
    return key


def load_cobra_checkpoint(folder):
    path = Path(folder) / "checkpoints" / "latest-checkpoint.pt"
    state = read_checkpoint(path)
    model = state.get("model") if isinstance(state, dict) else None
    if not isinstance(model, dict) or not {"projector", "llm_backbone"} <= model.keys():
        raise ConvertError(f"{path}: expected {{'model': {{'projector': ..., 'llm_backbone': ...}}}}")
    projector = Weights(model["projector"], path)
    lm = Weights({canonical_lm_key(k): v for k, v in model["llm_backbone"].items()}, path)
    return projector, lm


def projector_tensors(w, fused_width):
    hidden = 4 * fused_width   # FusedMLPProjector: Linear(Fv, 4 Fv)
    d_model = w.dims("projector.2.weight", 2)[0]
    out = []
    for idx, (rows, cols) in zip((0, 2, 4), ((hidden, fused_width), (d_model, hidden), (d_model, d_model))):
        out.append(copied(f"mm.{idx}.weight", w.get(f"projector.{idx}.weight", (rows, cols)), matrix=True))
        out.append(copied(f"mm.{idx}.bias", w.get(f"projector.{idx}.bias", (rows,))))
    return out, d_model


class MambaParams:
    """Mamba hyper-parameters, all read from tensor shapes."""

    def __init__(self, w):
        self.vocab, self.d_model = w.dims("backbone.embedding.weight", 2)
        self.n_layer = w.count_indexed("backbone.layers.")
        if self.n_layer == 0:
            raise ConvertError(f"{w.source}: missing tensor backbone.layers.0.mixer.in_proj.weight")
        mixer = "backbone.layers.0.mixer."
        self.d_inner = w.dims(mixer + "in_proj.weight", 2)[0] // 2
        self.d_conv = w.dims(mixer + "conv1d.weight", 3)[2]
        self.d_state = w.dims(mixer + "A_log", 2)[1]
        self.dt_rank = w.dims(mixer + "dt_proj.weight", 2)[1]


def same_values(a, b, rows_per_chunk=4096):
    """Exact equality of two same-shaped source tensors, compared a slab at a time."""
    if a.shape != b.shape:
        return False
    x, y = a.numpy(), b.numpy()
    return all(np.array_equal(x[r:r + rows_per_chunk], y[r:r + rows_per_chunk])
               for r in range(0, x.shape[0], rows_per_chunk))


def mamba_tensors(w, p, verbose):
    d, di, ds, dc, r, V = p.d_model, p.d_inner, p.d_state, p.d_conv, p.dt_rank, p.vocab
    embedding = w.get("backbone.embedding.weight", (V, d))
    out = [copied("token_embd.weight", embedding, matrix=True)]
    if "lm_head.weight" in w:
        head = w.get("lm_head.weight", (V, d))
        if same_values(head, embedding):
            if verbose:
                print("lm_head.weight equals the embedding: stored once (tied)")
        else:
            out.append(copied("output.weight", head, matrix=True))
    out.append(copied("output_norm.weight", w.get("backbone.norm_f.weight", (d,))))
    for i in range(p.n_layer):
        src, dst = f"backbone.layers.{i}.", f"blk.{i}."
        mixer = src + "mixer."
        a_log = w.get(mixer + "A_log", (di, ds))
        out += [
            copied(dst + "attn_norm.weight", w.get(src + "norm.weight", (d,))),
            copied(dst + "ssm_in.weight", w.get(mixer + "in_proj.weight", (2 * di, d)), matrix=True),
            copied(dst + "ssm_conv1d.weight", w.get(mixer + "conv1d.weight", (di, 1, dc)), (di, dc)),
            copied(dst + "ssm_conv1d.bias", w.get(mixer + "conv1d.bias", (di,))),
            copied(dst + "ssm_x.weight", w.get(mixer + "x_proj.weight", (r + 2 * ds, di)), matrix=True),
            copied(dst + "ssm_dt.weight", w.get(mixer + "dt_proj.weight", (di, r)), matrix=True),
            copied(dst + "ssm_dt.bias", w.get(mixer + "dt_proj.bias", (di,))),
            OutTensor(dst + "ssm_a", (di, ds), False,
                      lambda a_log=a_log: -np.exp(a_log.numpy().astype(np.float64))),
            copied(dst + "ssm_d", w.get(mixer + "D", (di,))),
            copied(dst + "ssm_out.weight", w.get(mixer + "out_proj.weight", (d, di)), matrix=True),
        ]
    return out


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5
EOS_TOKEN = "<|endoftext|>"


def tokenizer_metadata(path):
    """(tokens, token types, merges, id of <|endoftext|>) from a Hugging Face tokenizer.json."""
    tok = read_json(path)
    if json_field(tok, ["model", "type"], path) != "BPE":
        raise ConvertError(f"{path}: tokenizer model is not BPE")
    vocab = json_field(tok, ["model", "vocab"], path)
    merges = json_field(tok, ["model", "merges"], path)
    added = tok.get("added_tokens") or []
    n = 1 + max(list(vocab.values()) + [a["id"] for a in added])
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [TOKEN_UNUSED] * n
    for text, i in vocab.items():
        tokens[i], types[i] = text, TOKEN_NORMAL
    for a in added:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = TOKEN_CONTROL if a.get("special") else TOKEN_USER_DEFINED
    merge_strings = [m if isinstance(m, str) else " ".join(m) for m in merges]
    eos = [a["id"] for a in added if a["content"] == EOS_TOKEN]
    if not eos:
        raise ConvertError(f"{path}: no {EOS_TOKEN} added token")
    return tokens, types, merge_strings, eos[0]


PROMPT_TEMPLATE = "<|user|>\n{question}<|endoftext|>\n<|assistant|>\n"
# The zephyr chat template (HuggingFaceH4/zephyr-7b-beta), for other GGUF tools
CHAT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}")


# ---------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------

FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}   # llama.cpp's general.file_type numbering
# The matrices --outtype q4_0 stores as Q4_0 (name suffixes of the LM's layers): in_proj and
# out_proj, 89% of cobra+3b's weights. Every other matrix stays Q8_0; docs/performance.md has the
# measurements behind the choice.
Q4_0_MATRICES = ("ssm_in.weight", "ssm_out.weight")
# The --outtype values that store matrices in blocks of 32 values along ne[0].
BLOCK_OUTTYPES = ("q8_0", "q4_0")
PROJECTOR_TYPE = "fused-gelu-mlp"
RESIZE_STRATEGY = "resize-naive"
RMS_NORM_EPS = 1e-5


def output_type(tensor, outtype):
    """F32 unless the tensor is a matrix and a smaller type was asked for; Q8_0 and Q4_0 need
    ne[0] % 32 (F16 otherwise), and q4_0 keeps all but Q4_0_MATRICES at Q8_0."""
    if not tensor.matrix or outtype == "f32":
        return F32
    if outtype not in BLOCK_OUTTYPES or tensor.shape[-1] % gguf_io.QK8_0:
        return F16
    if outtype == "q4_0" and tensor.name.startswith("blk.") and tensor.name.endswith(Q4_0_MATRICES):
        return Q4_0
    return Q8_0


def read_cobra_config(folder):
    path = Path(folder) / "config.json"
    model = json_field(read_json(path), ["model"], path)
    fields = ["model_id", "arch_specifier", "vision_backbone_id", "llm_backbone_id",
              "image_resize_strategy", "llm_max_length"]
    cfg = {k: json_field(model, [k], path) for k in fields}
    if not cfg["arch_specifier"].endswith("+" + PROJECTOR_TYPE):
        raise ConvertError(f"{path}: unknown architecture: arch_specifier {cfg['arch_specifier']!r}"
                           f" (only *+{PROJECTOR_TYPE})")
    if cfg["image_resize_strategy"] != RESIZE_STRATEGY:
        raise ConvertError(f"{path}: image_resize_strategy {cfg['image_resize_strategy']!r} "
                           f"unsupported (only {RESIZE_STRATEGY})")
    cfg["image_size"] = image_size_from_id(cfg["vision_backbone_id"], path)
    return cfg


class Sources:
    """Everything a model file is assembled from: the Cobra config (read_cobra_config's fields),
    the towers by GGUF prefix in feature order, the projector and language-model weights, and the
    tokenizer metadata (tokenizer_metadata's tuple)."""

    def __init__(self, cfg, towers, projector, lm, tokenizer):
        self.cfg, self.towers, self.projector, self.lm = cfg, towers, projector, lm
        self.tokenizer = tokenizer


def load_sources(args):
    """The released checkpoints, mapped (nothing read beyond headers yet)."""
    projector, lm = load_cobra_checkpoint(args.cobra)
    return Sources(read_cobra_config(args.cobra),
                   {"dino": load_tower(args.dino), "siglip": load_tower(args.siglip)},
                   projector, lm, tokenizer_metadata(Path(args.tokenizer)))


def assemble(src, outtype, verbose):
    """A GGUFWriter with every key and tensor of the model; tensor values are made while writing."""
    cfg, towers, projector, lm = src.cfg, src.towers, src.projector, src.lm
    tokens, types, merges, eos = src.tokenizer

    patch = towers["dino"].patch
    if towers["siglip"].patch != patch:
        raise ConvertError(f"{towers['siglip'].weights.source}: patch size "
                           f"{towers['siglip'].patch} differs from "
                           f"DINOv2's {patch}")
    grid = cfg["image_size"] // patch

    w = gguf_io.GGUFWriter()
    w.add_string("general.architecture", "cobra")
    w.add_string("general.name", cfg["model_id"])
    w.add_uint32("general.alignment", w.alignment)
    w.add_uint32("general.file_type", FILE_TYPES[outtype])
    for key in ("arch_specifier", "vision_backbone_id", "llm_backbone_id", "image_resize_strategy"):
        w.add_string(f"cobra.{key}", cfg[key])
    w.add_string("cobra.prompt_template", PROMPT_TEMPLATE)
    w.add_uint32("cobra.llm_max_length", cfg["llm_max_length"])

    w.add_uint32("clip.vision.image_size", cfg["image_size"])
    w.add_uint32("clip.vision.patch_size", patch)
    w.add_array("clip.vision.feature_order", T_STRING, list(towers))
    for name, t in towers.items():
        k = f"clip.{name}."
        w.add_uint32(k + "embedding_length", t.width)
        w.add_uint32(k + "feed_forward_length", stored_mlp_width(t, outtype))
        w.add_uint32(k + "attention.head_count", t.heads)
        w.add_float32(k + "attention.layer_norm_epsilon", LAYER_NORM_EPS)
        w.add_uint32(k + "block_count", t.depth)
        w.add_uint32(k + "feature_layer", t.feature_layer)
        w.add_uint32(k + "n_register_tokens", t.reg_tokens)
        w.add_bool(k + "has_class_token", t.class_token)
        w.add_array(k + "image_mean", T_FLOAT32, t.mean)
        w.add_array(k + "image_std", T_FLOAT32, t.std)
        w.add_string(k + "architecture", t.arch)
    w.add_string("clip.projector_type", PROJECTOR_TYPE)

    p = MambaParams(lm)
    w.add_uint32("mamba.context_length", cfg["llm_max_length"])
    w.add_uint32("mamba.embedding_length", p.d_model)
    w.add_uint32("mamba.block_count", p.n_layer)
    w.add_uint32("mamba.feed_forward_length", 0)
    w.add_uint32("mamba.attention.head_count", 0)
    w.add_uint32("mamba.ssm.conv_kernel", p.d_conv)
    w.add_uint32("mamba.ssm.inner_size", p.d_inner)
    w.add_uint32("mamba.ssm.state_size", p.d_state)
    w.add_uint32("mamba.ssm.time_step_rank", p.dt_rank)
    w.add_float32("mamba.attention.layer_norm_rms_epsilon", RMS_NORM_EPS)
    w.add_uint32("mamba.vocab_size", p.vocab)

    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "gpt-2")
    w.add_array("tokenizer.ggml.tokens", T_STRING, tokens)
    w.add_array("tokenizer.ggml.token_type", T_INT32, types)
    w.add_array("tokenizer.ggml.merges", T_STRING, merges)
    for key in ("bos", "eos", "unknown", "padding"):
        w.add_uint32(f"tokenizer.ggml.{key}_token_id", eos)
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    w.add_string("tokenizer.ggml.normalizer", "NFC")
    w.add_string("tokenizer.chat_template", CHAT_TEMPLATE)

    tensors = []
    for name, t in towers.items():
        tensors += tower_tensors(t, name, grid, outtype)
    proj, d_model = projector_tensors(projector, sum(t.width for t in towers.values()))
    if d_model != p.d_model:
        raise ConvertError(f"{projector.source}: tensor projector.2.weight has {d_model} rows, "
                           f"the language model has d_model {p.d_model}")
    tensors += proj
    tensors += mamba_tensors(lm, p, verbose)
    for t in tensors:
        w.add_tensor(t.name, t.shape, output_type(t, outtype), t.produce)
    return w


def build(args):
    """A GGUFWriter for the released checkpoints named by the command line."""
    return assemble(load_sources(args), args.outtype, not args.quiet)


def tensor_group(name):
    head = name.split(".")[0]
    return {"dino": "dino", "siglip": "siglip", "mm": "projector"}.get(head, "mamba")


class Progress:
    """Prints one line per finished tensor group, then a summary."""

    def __init__(self, verbose):
        self.verbose = verbose
        self.group, self.group_count, self.group_params = None, 0, 0
        self.params, self.nbytes, self.per_type = 0, 0, {}

    def __call__(self, name, shape, ggml_type, nbytes):
        group = tensor_group(name)
        if group != self.group:
            self.flush()
            self.group = group
        count = int(np.prod(shape, dtype=np.int64))
        self.group_count += 1
        self.group_params += count
        self.params += count
        self.nbytes += nbytes
        type_name = gguf_io.TYPE_NAMES[ggml_type]
        self.per_type[type_name] = self.per_type.get(type_name, 0) + 1

    def flush(self):
        if self.verbose and self.group_count:
            print(f"{self.group}: {self.group_count} tensors, {self.group_params:,} params")
        self.group_count, self.group_params = 0, 0

    def summary(self, path):
        self.flush()
        if self.verbose:
            types = ", ".join(f"{k} {v}" for k, v in sorted(self.per_type.items()))
            print(f"wrote {path}: {self.params:,} params, {self.nbytes:,} tensor bytes, "
                  f"{os.path.getsize(path):,} file bytes; tensors by type: {types}")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cobra", required=True, help="Cobra folder (config.json, checkpoints/)")
    ap.add_argument("--dino", required=True, help="timm DINOv2 folder")
    ap.add_argument("--siglip", required=True, help="timm or open_clip SigLIP folder")
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json")
    ap.add_argument("-o", "--output", required=True, help="output .gguf")
    ap.add_argument("--outtype", choices=sorted(FILE_TYPES), default="f32")
    ap.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.output)
    partial = out.with_name(out.name + ".partial")   # never leave a truncated model behind
    try:
        writer = build(args)
        progress = Progress(not args.quiet)
        writer.write(partial, on_tensor=progress)
        os.replace(partial, out)
        progress.summary(out)
    except (ConvertError, gguf_io.GGUFError, OSError) as e:
        if partial.exists():
            partial.unlink()
        print(f"cobra_convert.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
