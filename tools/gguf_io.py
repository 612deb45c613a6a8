"""A small GGUF v3 writer and reader (Python 3 + numpy only).

Shared by the converter, its tests and the benchmarks. The writer streams tensor data one tensor at
a time; the reader memory-maps the file and parses every byte itself, so tests check the bytes the
engine will see rather than trusting the writer.

Shapes are numpy (row-major) shapes at the Python boundary; the file stores ggml `ne`, the reverse.
"""

import struct

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3

# ggml tensor types (the ones this project uses)
F32, F16, Q4_0, Q8_0 = 0, 1, 2, 8
TYPE_NAMES = {F32: "F32", F16: "F16", Q4_0: "Q4_0", Q8_0: "Q8_0"}
QK8_0 = 32
Q8_0_BLOCK_BYTES = 2 + QK8_0
QK4_0 = 32
Q4_0_BLOCK_BYTES = 2 + QK4_0 // 2
Q4_0_DTYPE = [("d", "<f2"), ("qs", "u1", QK4_0 // 2)]

# GGUF metadata value types
(T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY,
 T_UINT64, T_INT64, T_FLOAT64) = range(13)

_SCALAR_FORMATS = {
    T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h", T_UINT32: "<I", T_INT32: "<i",
    T_FLOAT32: "<f", T_BOOL: "<?", T_UINT64: "<Q", T_INT64: "<q", T_FLOAT64: "<d",
}


class GGUFError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Tensor encodings
# ---------------------------------------------------------------------------------------------

def tensor_nbytes(shape, ggml_type):
    """Bytes of a tensor of numpy `shape` stored as `ggml_type`."""
    count = int(np.prod(shape, dtype=np.int64))
    if ggml_type == F32:
        return 4 * count
    if ggml_type == F16:
        return 2 * count
    if ggml_type == Q8_0:
        if shape[-1] % QK8_0:
            raise GGUFError(f"Q8_0 needs ne[0] ({shape[-1]}) to be a multiple of {QK8_0}")
        return count // QK8_0 * Q8_0_BLOCK_BYTES
    if ggml_type == Q4_0:
        if shape[-1] % QK4_0:
            raise GGUFError(f"Q4_0 needs ne[0] ({shape[-1]}) to be a multiple of {QK4_0}")
        return count // QK4_0 * Q4_0_BLOCK_BYTES
    raise GGUFError(f"unsupported ggml type {ggml_type}")


def quantize_q8_0(x):
    """ggml's quantize_row_q8_0_ref on float32 rows: per 32 values d = max|x| / 127 (stored as
    f16), q = roundf(x / d) computed as x * (1 / d) in float32, ties away from zero."""
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, QK8_0)
    amax = np.abs(blocks).max(axis=1)
    d = amax / np.float32(127)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    scaled = blocks * inv[:, None]
    q = np.rint(scaled)
    truncated = np.trunc(scaled)
    ties = np.abs(scaled - truncated) == np.float32(0.5)
    q[ties] = truncated[ties] + np.sign(scaled[ties])
    out = np.empty(len(blocks), dtype=[("d", "<f2"), ("qs", "i1", QK8_0)])
    out["d"] = d.astype(np.float16)
    out["qs"] = q.astype(np.int8)
    return out


def quantize_q4_0(x):
    """ggml's quantize_row_q4_0_ref on float32 rows: per 32 values m = the first value of largest
    magnitude, d = m / -8 (stored as f16), q = min(15, trunc(x * (1 / d) + 8.5)) in float32;
    byte i holds q[i] in its low nibble and q[16 + i] in its high one."""
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, QK4_0)
    m = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)]
    d = m / np.float32(-8)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    q = np.minimum(15, np.trunc(blocks * inv[:, None] + np.float32(8.5))).astype(np.uint8)
    out = np.empty(len(blocks), dtype=Q4_0_DTYPE)
    out["d"] = d.astype(np.float16)
    out["qs"] = q[:, :QK4_0 // 2] | q[:, QK4_0 // 2:] << 4
    return out


def encode_tensor(array, ggml_type):
    """Bytes of `array` (any float dtype) in ggml's layout for `ggml_type`."""
    if ggml_type == F32:
        return np.ascontiguousarray(array, dtype="<f4").tobytes()
    if ggml_type == F16:
        return np.ascontiguousarray(array, dtype="<f2").tobytes()
    if ggml_type == Q8_0:
        return quantize_q8_0(array).tobytes()
    if ggml_type == Q4_0:
        return quantize_q4_0(array).tobytes()
    raise GGUFError(f"unsupported ggml type {ggml_type}")


def decode_tensor(raw, shape, ggml_type):
    """float32 numpy array of numpy `shape` from a tensor's raw bytes (a uint8 array)."""
    if ggml_type == F32:
        return raw.view("<f4").reshape(shape)
    if ggml_type == F16:
        return raw.view("<f2").astype(np.float32).reshape(shape)
    if ggml_type == Q8_0:
        blocks = raw.view([("d", "<f2"), ("qs", "i1", QK8_0)])
        values = blocks["qs"].astype(np.float32) * blocks["d"].astype(np.float32)[:, None]
        return values.reshape(shape)
    if ggml_type == Q4_0:
        blocks = raw.view(Q4_0_DTYPE)
        q = np.concatenate([blocks["qs"] & 15, blocks["qs"] >> 4], axis=1).astype(np.float32) - 8
        return (q * blocks["d"].astype(np.float32)[:, None]).reshape(shape)
    raise GGUFError(f"unsupported ggml type {ggml_type}")


def q8_0_scales(raw):
    """Per-block f16 scales d of a Q8_0 tensor's raw bytes, as float32 (for rounding bounds)."""
    return raw.view([("d", "<f2"), ("qs", "i1", QK8_0)])["d"].astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------

def _pack_string(s):
    data = s.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _pack_value(vtype, value):
    if vtype == T_STRING:
        return _pack_string(value)
    if vtype == T_ARRAY:
        elem_type, items = value
        out = [struct.pack("<IQ", elem_type, len(items))]
        if elem_type == T_STRING:
            out.extend(_pack_string(s) for s in items)
        else:
            out.append(np.asarray(items, dtype=_SCALAR_FORMATS[elem_type]).tobytes())
        return b"".join(out)
    return struct.pack(_SCALAR_FORMATS[vtype], value)


def _align(n, alignment):
    return (n + alignment - 1) // alignment * alignment


class GGUFWriter:
    """Collects metadata and tensor descriptions, then writes the file in one pass.

    add_tensor takes a `produce` callable returning the tensor's values (numpy shape `shape`), called
    only while its data is written, so at most one converted tensor is in memory at a time."""

    def __init__(self, alignment=32):
        self.alignment = alignment
        self.kv = []
        self.tensors = []
        self._names = set()

    def add(self, key, vtype, value):
        self.kv.append((key, vtype, value))

    def add_string(self, key, value):
        self.add(key, T_STRING, value)

    def add_uint32(self, key, value):
        self.add(key, T_UINT32, value)

    def add_float32(self, key, value):
        self.add(key, T_FLOAT32, value)

    def add_bool(self, key, value):
        self.add(key, T_BOOL, value)

    def add_array(self, key, elem_type, items):
        self.add(key, T_ARRAY, (elem_type, list(items)))

    def add_tensor(self, name, shape, ggml_type, produce):
        if name in self._names:
            raise GGUFError(f"duplicate tensor {name}")
        self._names.add(name)
        self.tensors.append((name, tuple(int(n) for n in shape), ggml_type, produce))

    def write(self, path, on_tensor=None):
        """Write everything to `path`; `on_tensor(name, shape, type, nbytes)` is called per tensor."""
        header = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(self.tensors), len(self.kv))]
        for key, vtype, value in self.kv:
            header.append(_pack_string(key) + struct.pack("<I", vtype) + _pack_value(vtype, value))
        offset = 0
        layout = []
        for name, shape, ggml_type, produce in self.tensors:
            nbytes = tensor_nbytes(shape, ggml_type)
            ne = shape[::-1]
            header.append(_pack_string(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne,
                                                           ggml_type, offset))
            layout.append((name, shape, ggml_type, produce, offset, nbytes))
            offset = _align(offset + nbytes, self.alignment)
        head = b"".join(header)
        data_start = _align(len(head), self.alignment)
        with open(path, "wb") as f:
            f.write(head)
            f.write(b"\0" * (data_start - len(head)))
            for name, shape, ggml_type, produce, rel, nbytes in layout:
                f.write(b"\0" * (data_start + rel - f.tell()))
                values = produce()
                if tuple(values.shape) != shape:
                    raise GGUFError(f"tensor {name}: produced shape {values.shape}, declared {shape}")
                self._write_data(f, values, ggml_type)
                if f.tell() != data_start + rel + nbytes:
                    raise GGUFError(f"tensor {name}: wrote the wrong number of bytes")
                if on_tensor:
                    on_tensor(name, shape, ggml_type, nbytes)
            f.write(b"\0" * (_align(f.tell(), self.alignment) - f.tell()))

    @staticmethod
    def _write_data(f, values, ggml_type, chunk_values=1 << 22):
        """Encode a slab of rows at a time so a large matrix needs no full-size temporaries."""
        rows = values.reshape(-1, values.shape[-1]) if values.ndim else values.reshape(1, 1)
        step = max(1, chunk_values // max(1, rows.shape[1]))
        for r in range(0, rows.shape[0], step):
            f.write(encode_tensor(rows[r:r + step], ggml_type))


# ---------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------

class TensorInfo:
    def __init__(self, name, ne, ggml_type, offset, raw):
        self.name = name
        self.ne = ne                 # ggml order
        self.shape = tuple(ne[::-1])  # numpy order
        self.type = ggml_type
        self.offset = offset         # absolute file offset of the data
        self.raw = raw               # uint8 memmap of the tensor's bytes

    def numpy(self):
        """The tensor's values as float32 (dequantised), numpy shape."""
        return decode_tensor(self.raw, self.shape, self.type)


class _Cursor:
    def __init__(self, buf, path):
        self.buf = buf
        self.pos = 0
        self.path = path

    def take(self, n):
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated at offset {self.pos} (need {n} bytes)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(out)

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def string(self):
        (n,) = self.unpack("<Q")
        return self.take(n).decode("utf-8")

    def value(self, vtype):
        if vtype == T_STRING:
            return self.string()
        if vtype == T_ARRAY:
            elem_type, count = self.unpack("<IQ")
            if elem_type == T_STRING:
                return [self.string() for _ in range(count)]
            fmt = _SCALAR_FORMATS.get(elem_type)
            if fmt is None:
                raise GGUFError(f"{self.path}: bad array element type {elem_type}")
            size = struct.calcsize(fmt)
            return np.frombuffer(self.take(size * count), dtype=fmt).tolist()
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is None:
            raise GGUFError(f"{self.path}: bad metadata value type {vtype}")
        return self.unpack(fmt)[0]


class GGUFReader:
    """Parses a GGUF v3 file: `kv` (key -> value), `kv_types` (key -> (type, array element type or
    None)), `tensors` (name -> TensorInfo, in file order), `alignment`, `data_start`."""

    def __init__(self, path):
        self.path = str(path)
        self.buf = np.memmap(self.path, dtype=np.uint8, mode="r")
        cur = _Cursor(self.buf, self.path)
        if cur.take(4) != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: bad magic")
        version, n_tensors, n_kv = cur.unpack("<IQQ")
        if version != GGUF_VERSION:
            raise GGUFError(f"{self.path}: version {version}, expected {GGUF_VERSION}")
        self.kv = {}
        self.kv_types = {}
        for _ in range(n_kv):
            key = cur.string()
            if key in self.kv:
                raise GGUFError(f"{self.path}: duplicate key {key}")
            (vtype,) = cur.unpack("<I")
            elem_type = None
            if vtype == T_ARRAY:
                elem_type = struct.unpack("<I", bytes(self.buf[cur.pos:cur.pos + 4]))[0]
            self.kv[key] = cur.value(vtype)
            self.kv_types[key] = (vtype, elem_type)
        self.alignment = self.kv.get("general.alignment", 32)
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            (n_dims,) = cur.unpack("<I")
            ne = cur.unpack(f"<{n_dims}Q")
            ggml_type, rel = cur.unpack("<IQ")
            infos.append((name, ne, ggml_type, rel))
        self.data_start = _align(cur.pos, self.alignment)
        self.tensors = {}
        for name, ne, ggml_type, rel in infos:
            if name in self.tensors:
                raise GGUFError(f"{self.path}: duplicate tensor {name}")
            if rel % self.alignment:
                raise GGUFError(f"{self.path}: tensor {name} offset {rel} not aligned")
            nbytes = tensor_nbytes(tuple(ne[::-1]), ggml_type)
            start = self.data_start + rel
            if start + nbytes > len(self.buf):
                raise GGUFError(f"{self.path}: tensor {name} data past the end of the file")
            self.tensors[name] = TensorInfo(name, tuple(ne), ggml_type, start,
                                            self.buf[start:start + nbytes])
