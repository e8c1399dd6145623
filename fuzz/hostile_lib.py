"""Helpers of fuzz/hostile_round.py: safetensors surgery, case folders, and the checks every
case makes (exit status, one stderr line naming the file, nothing changed in the case folder)."""
import hashlib, json, os, shutil, signal, struct, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LK = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(ROOT, "target/debug/lorakit")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
FX = os.path.join(ROOT, "fixtures")
W = tempfile.mkdtemp(prefix="lorakit-hostile-")
STATS = {"cases": 0, "violations": 0, "skipped": 0}
VIOLATIONS = []


# ---------------------------------------------------------------- safetensors surgery
def st_read(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


def st_write(p, h, data, raw_header=None):
    hb = raw_header if raw_header is not None else json.dumps(h).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + data)


def st_tensors(p):
    """name -> (dtype, shape, bytes), in header order."""
    h, data = st_read(p)
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in h.items() if k != "__metadata__"}, h.get("__metadata__")


def st_build(p, tensors, meta=None):
    """Writes tensors (name -> (dtype, shape, bytes)) contiguously, in the given order."""
    h, off, data = {}, 0, b""
    if meta is not None:
        h["__metadata__"] = meta
    for k, (dt, sh, b) in tensors.items():
        h[k] = {"dtype": dt, "shape": sh, "data_offsets": [off, off + len(b)]}
        off += len(b)
        data += b
    st_write(p, h, data)


def st_edit(p, fn):
    """fn(tensors) edits the dict in place; the file is rebuilt contiguously."""
    t, meta = st_tensors(p)
    fn(t)
    st_build(p, t, meta)


def f32(vals):
    return struct.pack("<%df" % len(vals), *vals)


def poke_f32(p, name, index, value):
    """Writes one f32 value (a NaN or inf pattern too) into tensor `name` in place."""
    h, data = st_read(p)
    o = h[name]["data_offsets"][0] + 4 * index
    raw = value if isinstance(value, bytes) else struct.pack("<f", value)
    data = data[:o] + raw + data[o + 4:]
    st_write(p, h, data)


def key_like(p, *parts):
    t, _ = st_tensors(p)
    for k in t:
        if all(x in k for x in parts):
            return k
    raise KeyError((p, parts))


# ---------------------------------------------------------------- case folders and checks
def snapshot(d):
    out = {}
    for dp, dns, fns in os.walk(d):
        for n in dns + fns:
            p = os.path.join(dp, n)
            rel = os.path.relpath(p, d)
            if os.path.islink(p):
                out[rel] = "link:" + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir:%o" % (os.stat(p).st_mode & 0o7777)
            elif not os.path.isfile(p):  # a FIFO or socket: reading it would block the harness
                out[rel] = "special:%o" % os.stat(p).st_mode
            else:
                out[rel] = hashlib.blake2b(open(p, "rb").read(), digest_size=16).hexdigest()
    return out


class Case:
    def __init__(self, name, *copies):
        """A fresh case folder holding `copies`: (fixture or TUNED, name in the case) pairs."""
        self.name = name
        self.dir = os.path.join(W, name.replace("/", "_"))
        os.makedirs(self.dir)
        for src, dst in copies:
            self.copy(src, dst)

    def p(self, *rel):
        return os.path.join(self.dir, *rel)

    def copy(self, src, dst):
        s = os.path.join(W, "_tuned.safetensors") if src == TUNED else os.path.join(FX, src)
        d = self.p(dst)
        os.makedirs(os.path.dirname(d), exist_ok=True)
        if os.path.isdir(s):
            shutil.copytree(s, d)
        else:
            shutil.copy(s, d)
        return d

    def json_edit(self, rel, fn):
        p = self.p(rel)
        c = json.load(open(p))
        r = fn(c)
        json.dump(c if r is None else r, open(p, "w"))

    def write(self, rel, text):
        p = self.p(rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "wb" if isinstance(text, bytes) else "w").write(text)
        return p


def selected(name):
    return FILTER in name


def violation(name, what, detail=""):
    STATS["violations"] += 1
    VIOLATIONS.append(name)
    print(f"VIOLATION {name}: {what} | {detail}"[:900], flush=True)


def run(c, args, rc=(2,), mention=(), env=None, timeout=120):
    """Runs lorakit in the case folder; the folder must be unchanged afterwards."""
    STATS["cases"] += 1
    before = snapshot(c.dir)
    e = dict(os.environ, **(env or {}))
    p = subprocess.run([LK] + args, cwd=c.dir, capture_output=True, text=True, timeout=timeout, env=e,
                       errors="replace")
    after = snapshot(c.dir)
    lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("warning")]
    line = lines[0] if lines else ""
    if p.returncode not in rc:
        violation(c.name, f"rc={p.returncode} (want {rc})", p.stderr.strip()[:500] + " / " + p.stdout.strip()[:200])
    elif p.returncode < 2:
        pass
    elif "panicked" in p.stderr:
        violation(c.name, "panic", p.stderr[:500])
    elif len(lines) != 1:
        violation(c.name, f"{len(lines)}-line error", p.stderr[:500])
    else:
        # An entry is a string the line must hold, or a tuple of which it must hold one.
        missing = [m for m in mention if not any(x in line for x in ((m,) if isinstance(m, str) else m))]
        if missing:
            violation(c.name, f"message does not name {missing}", line)
    if before != after:
        diff = sorted(set(before.items()) ^ set(after.items()))
        violation(c.name, "the case folder changed", str(diff)[:500])
    return p, line


def run_ok(c, args, env=None, timeout=120):
    STATS["cases"] += 1
    p = subprocess.run([LK] + args, cwd=c.dir, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, **(env or {})), errors="replace")
    if p.returncode != 0:
        violation(c.name, f"rc={p.returncode} (want 0)", p.stderr.strip()[:500])
    return p


def setup_only(c, args):
    """A preparatory run (not counted); fails loudly if it does not succeed."""
    p = subprocess.run([LK] + args, cwd=c.dir, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"{c.name}: setup {args} failed: {p.stderr}")
    return p


CASES = []


def case(fn):
    CASES.append(fn)
    return fn


BASE = "llama/base"
QV = "llama/adapters/qv_r8"
TUNED = "@tuned"  # W/_tuned.safetensors, built once by tuned_fixture(): base + qv_r8, every tensor
IDS = "text/tiny_ids.safetensors"
QA = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
QB = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
WQ = "model.layers.0.self_attn.q_proj.weight"


def signalled(c, argv, sig, delay):
    """Starts `lorakit ARGV` in the case's folder, sends `sig` after `delay` seconds and waits:
    the finished child, or None where it did not stop (a violation, recorded) or finished
    before the signal (a note)."""
    child = subprocess.Popen([LK] + argv, cwd=c.dir, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    time.sleep(delay)
    child.send_signal(sig)
    try:
        child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        violation(c.name, "did not stop on the signal", "")
        return None
    if child.returncode == 0:
        print(f"note: {c.name}: finished before the signal")
        return None
    return child


def run_either(c, args, timeout=120, refusals=(2,)):
    """Refused cleanly (exit 2, or one of `refusals`; one line; nothing changed) or done without
    changing any file that existed before."""
    before = snapshot(c.dir)
    p = subprocess.run([LK] + args, cwd=c.dir, capture_output=True, text=True, timeout=timeout, errors="replace")
    if p.returncode == 0:
        STATS["cases"] += 1
        after = snapshot(c.dir)
        changed = [k for k, v in before.items() if after.get(k) != v and not v.startswith("dir:")]
        if changed:
            violation(c.name, "a file that existed before was changed or removed", str(changed)[:400])
        return p
    STATS["cases"] += 1
    lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("warning")]
    if p.returncode not in refusals or (p.returncode >= 2 and len(lines) != 1):
        violation(c.name, f"rc={p.returncode}, {len(lines)} lines", p.stderr[:400])
    if snapshot(c.dir) != before:
        violation(c.name, "the case folder changed on a refusal", "")
    return p
