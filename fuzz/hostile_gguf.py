"""GGUF surgery for the hostile round (standard library only): parse a GGUF file into its
metadata, tensor infos and data, change any of them, and write it back, either with the stored
offsets kept (to lie about them) or laid out afresh (to change a tensor's shape, type or bytes).

The layout is llama.cpp's (ggml/src/gguf.cpp, gguf-py/gguf/gguf_reader.py at llama.cpp b6000;
the same as the `gguf` 0.17 package in /work/venv): magic "GGUF", u32 version, u64 tensor count,
u64 metadata count; each key a u64-length string, a u32 type and the value (arrays: u32 item
type, u64 count, items); each tensor info a name, u32 n_dims, u64 dims (innermost first), u32
ggml type, u64 offset from the data section; the data section starts at the next multiple of
`general.alignment` (default 32). Block sizes below are ggml's type traits (ggml/src/ggml.c)."""
import struct

# ggml type id -> (name, elements per block, bytes per block)
GGML = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
        7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
        12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 30: ("BF16", 1, 2)}
TYPE = {v[0]: k for k, v in GGML.items()}
# metadata value type -> struct code (8 string, 9 array handled apart)
SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
U32, I32, F32, STR, ARR, U16 = 4, 5, 6, 8, 9, 2


def nbytes(ty, dims):
    _, blk, size = GGML[ty]
    n = 1
    for d in dims:
        n *= d
    return n // blk * size


class Gguf:
    def __init__(self, path):
        b = open(path, "rb").read()
        self.pos = 4
        assert b[:4] == b"GGUF", path
        self.b = b
        self.version = self._u("I")
        nt, nk = self._u("Q"), self._u("Q")
        self.kv = []  # [key, type, value]; arrays: (item type, [values])
        for _ in range(nk):
            k = self._s()
            t = self._u("I")
            self.kv.append([k, t, self._val(t)])
        self.tensors = []  # dicts: name, dims, type, offset
        for _ in range(nt):
            name = self._s()
            nd = self._u("I")
            dims = [self._u("Q") for _ in range(nd)]
            self.tensors.append({"name": name, "dims": dims, "type": self._u("I"), "offset": self._u("Q")})
        a = self.align()
        self.data_start = (self.pos + a - 1) // a * a
        self.data = b[self.data_start:]
        for t in self.tensors:
            t["raw"] = self.data[t["offset"]:t["offset"] + nbytes(t["type"], t["dims"])]
        del self.b

    def _u(self, code):
        v = struct.unpack_from("<" + code, self.b, self.pos)[0]
        self.pos += struct.calcsize(code)
        return v

    def _s(self):
        n = self._u("Q")
        s = self.b[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def _val(self, t):
        if t == STR:
            return self._s()
        if t == ARR:
            it, n = self._u("I"), self._u("Q")
            return (it, [self._val(it) for _ in range(n)])
        return self._u(SCALAR[t])

    def align(self):
        return next((v for k, t, v in self.kv if k == "general.alignment"), 32)

    # ------------------------------------------------------------ edits
    def get(self, key):
        return next((v for k, t, v in self.kv if k == key), None)

    def set(self, key, ty, value):
        for e in self.kv:
            if e[0] == key:
                e[1], e[2] = ty, value
                return self
        self.kv.append([key, ty, value])
        return self

    def drop(self, key):
        self.kv = [e for e in self.kv if e[0] != key]
        return self

    def t(self, name):
        return next(t for t in self.tensors if t["name"] == name)

    def reshape(self, name, dims, ty=None, fill=b"\0"):
        """Gives tensor `name` new dims (and type): its bytes are cut or padded with `fill`."""
        t = self.t(name)
        t["dims"], t["type"] = list(dims), t["type"] if ty is None else ty
        n = nbytes(t["type"], t["dims"])
        t["raw"] = (t["raw"] + fill * n)[:n]
        return self

    # ------------------------------------------------------------ writing
    @staticmethod
    def _ws(s):
        b = s.encode() if isinstance(s, str) else s
        return struct.pack("<Q", len(b)) + b

    def _wv(self, t, v):
        if t == STR:
            return self._ws(v)
        if t == ARR:
            it, items = v
            return struct.pack("<IQ", it, len(items)) + b"".join(self._wv(it, x) for x in items)
        return struct.pack("<" + SCALAR[t], v)

    def save(self, path, relayout=True, count=None, align=None, version=None, kv_count=None):
        """Writes the file; relayout=True places the tensors afresh (aligned, in order),
        False keeps every stored offset (and the old data section) as the caller left them.
        `align` pads with another alignment than general.alignment says (to lie about it);
        `count`, `kv_count` and `version` write other header numbers than the true ones."""
        a = self.align() if align is None else align
        if relayout:
            data, off = b"", 0
            for t in self.tensors:
                t["offset"] = off
                data += t["raw"] + b"\0" * ((-len(t["raw"])) % a)
                off = len(data)
        else:
            data = self.data
        nt = len(self.tensors) if count is None else count
        nk = len(self.kv) if kv_count is None else kv_count
        h = b"GGUF" + struct.pack("<IQQ", self.version if version is None else version, nt, nk)
        for k, t, v in self.kv:
            h += self._ws(k) + struct.pack("<I", t) + self._wv(t, v)
        for t in self.tensors:
            h += self._ws(t["name"]) + struct.pack("<I", len(t["dims"])) + b"".join(struct.pack("<Q", d) for d in t["dims"])
            h += struct.pack("<IQ", t["type"], t["offset"])
        h += b"\0" * ((-len(h)) % a)
        open(path, "wb").write(h + data)
