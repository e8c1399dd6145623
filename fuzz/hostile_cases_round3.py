"""Round-3 cases of fuzz/hostile_round.py: the code that changed on 2026-12-05 (direct-I/O writer,
per-step provenance records of recipes, `merge --quant keep` into compressed-tensors FP8_BLOCK) and
what rounds 1-2 did not try. Same harness and verdicts as the other case files (hostile_lib.py)."""
import json, os, random, signal, shutil, struct, subprocess, time

from hostile_lib import (BASE, FX, LK, QV, STATS, TUNED, Case, case, run, run_either, run_ok, setup_only, signalled,
                         snapshot, st_build, st_edit, st_read, st_tensors, st_write, violation)


# ---------------------------------------------------------------- a base whose merge is > 8 MiB
def big_model(c, n=1024, layers=4, seed=7):
    """A `layers`-weight f32 base (4 MiB per weight) in c/big/model.safetensors and a rank-8 PEFT
    adapter on every weight in c/bad: the merged output is > 8 MiB, so it fills the writer's
    direct-I/O buffer at least once."""
    rnd = random.Random(seed)
    row = struct.pack("<%df" % n, *[rnd.uniform(-1, 1) for _ in range(n)])
    w = row * n
    os.makedirs(c.p("big"), exist_ok=True)
    st_build(c.p("big/model.safetensors"), {f"layers.{i}.proj.weight": ("F32", [n, n], w) for i in range(layers)})
    a = {}
    for i in range(layers):
        a[f"base_model.model.layers.{i}.proj.lora_A.weight"] = ("F32", [8, n], row * 8)
        a[f"base_model.model.layers.{i}.proj.lora_B.weight"] = ("F32", [n, 8], row * 8)
    os.makedirs(c.p("bad"), exist_ok=True)
    st_build(c.p("bad/adapter_model.safetensors"), a)
    json.dump({"peft_type": "LORA", "r": 8, "lora_alpha": 8, "target_modules": ["proj"]},
              open(c.p("bad/adapter_config.json"), "w"))


def big_merge(out):
    return ["merge", "--base", "big/model.safetensors", "--adapter", "bad", "--out", out, "--quiet"]


def sh(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True)


class Mount:
    """A small file system mounted at c/mnt: tmpfs, or ext4 on a loop-mounted image outside the
    case folder (so the image is not part of the snapshot). Unmounted and removed on exit."""

    def __init__(self, c, kind, size, opts=""):
        self.c, self.mnt, self.img = c, c.p("mnt"), None
        os.makedirs(self.mnt)
        if kind == "tmpfs":
            r = sh("mount", "-t", "tmpfs", "-o", f"size={size}" + ("," + opts if opts else ""), "tmpfs", self.mnt)
        else:
            self.img = c.dir + ".img"
            sh("truncate", "-s", size, self.img)
            mk = ["mkfs.ext4", "-q", "-F"] + (["-b", "1024"] if kind == "ext4_1k" else []) + [self.img]
            r = sh(*mk)
            if r.returncode == 0:
                r = sh("mount", "-o", "loop" + ("," + opts if opts else ""), self.img, self.mnt)
        self.ok = r.returncode == 0
        self.err = r.stderr.strip()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        if self.ok:
            sh("umount", self.mnt)
        if self.img:
            os.remove(self.img)
        os.rmdir(self.mnt)


def listing(d):
    return sorted(os.path.relpath(os.path.join(dp, n), d) for dp, dns, fns in os.walk(d) for n in dns + fns)


@case
def writer_direct_io():
    if os.geteuid() != 0 or not shutil.which("mount"):
        print("note: not root: direct-I/O disk cases skipped")
        STATS["skipped"] += 1
        return
    # The reference bytes: the same merge through the buffered path, onto the case's own disk.
    ref_c = Case("r3_writer_reference")
    big_model(ref_c)
    setup_only(ref_c, big_merge("ref.safetensors") + [])
    ref = open(ref_c.p("ref.safetensors"), "rb").read()
    # Outputs on other file systems, with room: the bytes of the buffered path (direct on, off).
    for kind, size in (("tmpfs", "64M"), ("ext4", "64M"), ("ext4_1k", "64M")):
        for direct in ("1", "0"):
            c = Case(f"r3_out_on_{kind}_direct{direct}")
            big_model(c)
            with Mount(c, kind, size) as m:
                if not m.ok:
                    violation(c.name, "cannot mount", m.err)
                    continue
                p = run_ok(c, big_merge("mnt/o.safetensors"), env={"LORAKIT_DIRECT_IO": direct})
                if p.returncode == 0:
                    got = open(c.p("mnt/o.safetensors"), "rb").read()
                    if got != ref:
                        violation(c.name, "output bytes differ from the buffered path's", f"{len(got)} vs {len(ref)}")
                    left = [n for n in listing(c.p("mnt")) if n not in ("o.safetensors", "lost+found")]
                    if left:
                        violation(c.name, "stray files beside the output", str(left))
    # A disk that fills mid-write: too small for the output, large enough to start it.
    for kind, size in (("tmpfs", "6M"), ("tmpfs", "12M"), ("ext4", "12M"), ("ext4_1k", "12M")):
        for out in ("mnt/o.safetensors", "mnt/o"):
            c = Case(f"r3_full_{kind}_{size}_{'file' if out.endswith('s') else 'folder'}")
            big_model(c)
            with Mount(c, kind, size) as m:
                if not m.ok:
                    violation(c.name, "cannot mount", m.err)
                    continue
                before = listing(c.p("mnt"))
                run(c, big_merge(out), rc=(3,), mention=["mnt"])
                if listing(c.p("mnt")) != before:
                    violation(c.name, "files left on the full disk", str(listing(c.p("mnt")))[:300])
    # A read-only ext4 (root ignores permission bits, a read-only mount it does not).
    c = Case("r3_readonly_ext4")
    big_model(c)
    with Mount(c, "ext4", "16M", "ro") as m:
        if m.ok:
            run(c, big_merge("mnt/o.safetensors"), rc=(3,), mention=["mnt"])
        else:
            violation(c.name, "cannot mount", m.err)
    # Outputs that are not regular files, or that lead back to an input.
    specials = {
        "fifo": lambda c: os.mkfifo(c.p("o.safetensors")),
        "symlink_to_base_file": lambda c: os.symlink("big/model.safetensors", c.p("o.safetensors")),
        "symlink_to_adapter_file": lambda c: os.symlink("bad/adapter_model.safetensors", c.p("o.safetensors")),
        "char_device": lambda c: os.mknod(c.p("o.safetensors"), 0o666 | 0o020000, os.makedev(1, 3)),
        "symlink_to_fifo": lambda c: (os.mkfifo(c.p("f")), os.symlink("f", c.p("o.safetensors"))),
        "symlink_dir_to_base": lambda c: os.symlink("big", c.p("o.safetensors")),
    }
    for what, mk in specials.items():
        c = Case(f"r3_out_{what}")
        big_model(c, n=256)
        mk(c)
        if what == "char_device" and os.geteuid() != 0:
            STATS["skipped"] += 1
            continue
        mention = [("also an input", "not a regular file"), "o.safetensors"]
        run(c, big_merge("o.safetensors"), rc=(2,), mention=mention, timeout=60)
    # A dangling symlink as the output: replaced by the output file (links are never written
    # through, as for hub-cache links), its target not created.
    c = Case("r3_out_dangling_symlink")
    big_model(c, n=256)
    os.symlink("nowhere/x.safetensors", c.p("o.safetensors"))
    run_ok(c, big_merge("o.safetensors"))
    if os.path.islink(c.p("o.safetensors")) or os.path.exists(c.p("nowhere")):
        violation(c.name, "wrote through a dangling symlink", "")
    # A folder output that is a symlink to the base's folder.
    c = Case("r3_out_folder_symlink_to_base")
    big_model(c, n=256)
    os.symlink("big", c.p("o"))
    run(c, big_merge("o"), mention=["also an input"])


@case
def writer_signals():
    """SIGINT / SIGTERM mid-merge of a > 8 MiB output leave nothing; after SIGKILL the temp file
    may stay, and the next run into the same place sweeps it."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        for delay in (0.2, 0.5, 1.0):
            for out in ("o.safetensors", "o"):
                c = Case(f"r3_signal_{sig.name}_{delay}_{'file' if out.endswith('s') else 'folder'}")
                big_model(c, layers=12)
                STATS["cases"] += 1
                before = snapshot(c.dir)
                child = signalled(c, big_merge(out), sig, delay)
                if child is None:
                    continue
                after = snapshot(c.dir)
                if sig != signal.SIGKILL and after != before:
                    violation(c.name, f"rc={child.returncode}: the case folder changed",
                              str(sorted(set(after) - set(before)))[:300])
                if sig == signal.SIGKILL:
                    # The next run sweeps what the killed one left, and writes the whole output.
                    STATS["cases"] += 1
                    p = subprocess.run([LK] + big_merge(out), cwd=c.dir, capture_output=True, text=True)
                    if p.returncode != 0:
                        violation(c.name, f"the run after SIGKILL: rc={p.returncode}", p.stderr[:300])
                        continue
                    new = sorted(set(snapshot(c.dir)) - set(before))
                    want = ["o.safetensors"] if out.endswith("s") else None
                    if want is not None and new != want:
                        violation(c.name, "the run after SIGKILL left stray files", str(new))
                    if want is None and [n for n in new if not n.startswith("o")]:
                        violation(c.name, "the run after SIGKILL left stray files", str(new))
                    if want is None:
                        hidden = [n for n in new if os.path.basename(n).startswith(".")]
                        if hidden:
                            violation(c.name, "the run after SIGKILL left hidden files in the output", str(hidden))


# ---------------------------------------------------------------- recipes: per-step provenance
PARTS = """[[step]]
name = "p1"
command = "merge"
base = "../base"
adapter = ["../qv"]
out = "OUT"
part = "1/2"

[[step]]
name = "p2"
command = "merge"
base = "../base"
adapter = ["../qv"]
out = "OUT"
part = "2/2"

[[step]]
name = "fin"
command = "finalize"
out = "OUT"
"""


def run_recipe_either(c, argv, out_rel, mention=()):
    """A recipe run against forged records: it reruns (exit 0) or refuses (exit 2, one line naming
    the record); either way no file outside the output folder `out_rel` changes."""
    def outside(s):
        return {k: v for k, v in s.items() if not (k == out_rel or k.startswith(out_rel + "/"))}
    STATS["cases"] += 1
    before = snapshot(c.dir)
    p = subprocess.run([LK] + argv, cwd=c.dir, capture_output=True, text=True, timeout=120, errors="replace")
    lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("warning")]
    if p.returncode == 0:
        pass
    elif p.returncode != 2 or len(lines) != 1 or "panicked" in p.stderr:
        violation(c.name, f"rc={p.returncode}, {len(lines)} lines", p.stderr[:400])
    elif not all(any(x in lines[0] for x in ((m,) if isinstance(m, str) else m)) for m in mention):
        violation(c.name, f"message does not name {mention}", lines[0])
    after = snapshot(c.dir)
    if outside(after) != outside(before):
        violation(c.name, "a file outside the output changed",
                  str(sorted(set(outside(after).items()) ^ set(outside(before).items())))[:400])
    return p


@case
def recipe_records():
    def rc_case(name, body):
        c = Case(name, ("llama/base_sharded", "base"), (QV, "qv"))
        c.write("r/recipe.toml", body)
        return c

    # Forged records of a finished split merge: the next run reruns or refuses, and never
    # touches a file outside r/o.
    forgeries = {
        "not_json": lambda t: b"{not json",
        "truncated": lambda t: t[: len(t) // 2],
        "empty": lambda t: b"",
        "array": lambda t: b"[]",
        "version_future": lambda t: t.replace(b'"version": 2', b'"version": 99'),
        "outputs_outside": None,
        "outputs_absolute": None,
        "outputs_empty": None,
        "hash_lies": None,
        "inputs_outside": None,
    }
    records = [".lorakit-step-part-1-of-2.json", ".lorakit-step-part-2-of-2.json", ".lorakit-step-finalize.json"]
    for what, fn in forgeries.items():
        for rec in records:
            c = rc_case(f"r3_record_{what}_{rec[13:-5]}", PARTS.replace("OUT", "o"))
            setup_only(c, ["run", "r/recipe.toml", "--quiet"])
            p = c.p("r/o", rec)
            if not os.path.exists(p):
                violation(c.name, "no provenance record after the run", str(os.listdir(c.p("r/o"))))
                continue
            t = open(p, "rb").read()
            if fn is not None:
                open(p, "wb").write(fn(t))
            else:
                v = json.loads(t)
                if what == "outputs_outside":
                    for r in v["outputs"]:
                        r["path"] = "../base/model-00001-of-00004.safetensors"
                elif what == "outputs_absolute":
                    for r in v["outputs"]:
                        r["path"] = c.p("base", "config.json")
                elif what == "outputs_empty":
                    v["outputs"] = []
                    # and the files it wrote are gone: the step must run again
                    for n in os.listdir(c.p("r/o")):
                        if not n.startswith("."):
                            os.remove(c.p("r/o", n))
                elif what == "hash_lies":
                    for r in v["inputs"]:
                        if r.get("blake3"):
                            r["blake3"] = "0" * len(r["blake3"])
                elif what == "inputs_outside":
                    v["inputs"].append({"path": "/etc/passwd", "bytes": 1, "mtime_ns": 0, "blake3": "0" * 64})
                open(p, "w").write(json.dumps(v))
            rp = run_recipe_either(c, ["run", "r/recipe.toml", "--quiet"], "r/o", mention=[("recipe.toml", rec)])
            if rp.returncode == 0 and what == "outputs_empty":
                # Every output file the parts wrote must be back (finalize joined them again).
                if not [n for n in os.listdir(c.p("r/o")) if n.endswith(".safetensors")]:
                    violation(c.name, "a forged empty record made the parts skip: the output has no weights",
                              str(os.listdir(c.p("r/o"))))
    # Recipes whose steps share outputs they must not, or name themselves.
    step = '[[step]]\nname = "%s"\ncommand = "merge"\nbase = "../base"\nadapter = ["../qv"]\nout = "%s"\n%s\n'
    fin = '[[step]]\nname = "%s"\ncommand = "finalize"\nout = "%s"\n\n'
    bodies = {
        "same_part_twice": step % ("a", "o", 'part = "1/2"') + step % ("b", "o", 'part = "1/2"'),
        "parts_of_different_n": step % ("a", "o", 'part = "1/2"') + step % ("b", "o", 'part = "2/3"'),
        "part_and_whole": step % ("a", "o", 'part = "1/2"') + step % ("b", "o", ""),
        "whole_then_finalize": step % ("a", "o", "") + fin % ("f", "o"),
        "finalize_twice": step % ("a", "o", 'part = "1/1"') + fin % ("f", "o") + fin % ("g", "o"),
        "finalize_before_parts": fin % ("f", "o") + step % ("a", "o", 'part = "1/1"'),
        "finalize_missing_parts": step % ("a", "o", 'part = "1/2"') + fin % ("f", "o"),
        "finalize_dotdot": step % ("a", "o", 'part = "1/1"') + fin % ("f", "../base"),
        "finalize_absolute_base": step % ("a", "o", 'part = "1/1"') + fin % ("f", "BASEABS"),
        "finalize_of_input": fin % ("f", "../qv"),
        "part_out_is_base": step % ("a", "../base", 'part = "1/2"'),
        "recipe_as_adapter": step.replace('["../qv"]', '["recipe.toml"]') % ("a", "o", ""),
        "recipe_as_base": step.replace('"../base"', '"recipe.toml"') % ("a", "o", ""),
        "recipe_folder_as_out": step % ("a", ".", ""),
        "part_out_is_recipe": step % ("a", "recipe.toml", 'part = "1/2"'),
        "part_out_parent": step % ("a", "..", 'part = "1/2"'),
        "part_junk": step % ("a", "o", 'part = "1/2/3"'),
        "part_int": step % ("a", "o", "part = 1"),
    }
    # Accepted as valid: parts may run on other machines, so a finalize whose parts are not all
    # steps fails when it runs (exit 2, the parts that ran stay); an output folder that holds the
    # recipe or the inputs' folders (".", "..") keeps the files that were there.
    accepted = ("finalize_missing_parts", "recipe_folder_as_out", "part_out_parent")
    for what, body in bodies.items():
        for flag in ([], ["--dry-run"]):
            c = rc_case(f"r3_recipe_{what}{'_dry' if flag else ''}", body)
            if "BASEABS" in body:
                c.write("r/recipe.toml", body.replace("BASEABS", c.p("base")))
            argv = ["run", "r/recipe.toml", "--quiet"] + flag
            if what in accepted:
                run_either(c, argv) if flag or what != "finalize_missing_parts" else \
                    run_recipe_either(c, argv, "r/o", mention=[("recipe.toml", "step `")])
                continue
            run(c, argv, mention=[("recipe.toml", "step `")])
    # A finalize whose parts come from another run (another adapter) than the recipe's.
    c = rc_case("r3_recipe_finalize_foreign_parts", step % ("a", "o", 'part = "1/2"') + fin % ("f", "o"))
    c.copy("llama/adapters/rslora_all", "other")
    setup_only(c, ["merge", "--base", "base", "--adapter", "other", "--out", "r/o", "--part", "2/2", "--quiet"])
    run_recipe_either(c, ["run", "r/recipe.toml", "--quiet"], "r/o", mention=[("recipe.toml", ".lorakit-part")])
    if os.path.exists(c.p("r/o/model.safetensors.index.json")):
        violation(c.name, "finalize joined parts of two different merges", "")


# ---------------------------------------------------------------- merge --quant keep into FP8_BLOCK
def bf16(x):
    return struct.pack("<f", x)[2:]


@case
def fp8_block_keep():
    SRC = "quant/sweep/ct_fp8_partial"
    QS = "model.layers.0.self_attn.q_proj.weight_scale"
    QW = "model.layers.0.self_attn.q_proj.weight"

    def mk(name):
        return Case(name, (SRC + "/q", "q"), (SRC + "/ad", "ad"))

    def set_scale(c, idx, raw):
        def f(t):
            dt, shp, b = t[QS]
            t[QS] = (dt, shp, b[: 2 * idx] + raw + b[2 * idx + 2:])
        st_edit(c.p("q/model.safetensors"), f)

    def block(c, bs):
        c.json_edit("q/config.json", lambda v: v["quantization_config"]["config_groups"]["group_q_proj"]["weights"]
                    .__setitem__("block_structure", bs))

    def grid(c, shape):
        def f(t):
            dt, _, b = t[QS]
            n = 1
            for d in shape:
                n *= d
            t[QS] = (dt, shape, (b * 4)[: 2 * n])
        st_edit(c.p("q/model.safetensors"), f)

    def weight_byte(c, idx, byte):
        def f(t):
            dt, shp, b = t[QW]
            t[QW] = (dt, shp, b[:idx] + bytes([byte]) + b[idx + 1:])
        st_edit(c.p("q/model.safetensors"), f)

    lies = {
        "scale_nan": (lambda c: set_scale(c, 0, b"\xc0\x7f"), [QS]),
        "scale_inf": (lambda c: set_scale(c, 1, b"\x80\x7f"), [QS]),
        "scale_neg_inf": (lambda c: set_scale(c, 5, b"\x80\xff"), [QS]),
        "scale_last_partial_nan": (lambda c: set_scale(c, 5, b"\xc1\xff"), [QS]),
        "weight_e4m3_nan_7f": (lambda c: weight_byte(c, 0, 0x7F), [QW]),
        "weight_e4m3_nan_ff": (lambda c: weight_byte(c, 64 * 64 - 1, 0xFF), [QW]),
        "grid_too_small": (lambda c: grid(c, [2, 2]), [QS]),
        "grid_too_large": (lambda c: grid(c, [4, 2]), [QS]),
        "grid_transposed": (lambda c: grid(c, [2, 3]), [QS]),
        "grid_flat": (lambda c: grid(c, [6]), [QS]),
        "grid_3d": (lambda c: grid(c, [3, 2, 1]), [QS]),
        "block_vs_grid_rows": (lambda c: block(c, [32, 40]), [(QS, "config.json")]),
        "block_vs_grid_cols": (lambda c: block(c, [24, 64]), [(QS, "config.json")]),
        "block_zero": (lambda c: block(c, [0, 40]), ["config.json"]),
        "block_one_dim": (lambda c: block(c, [24]), ["config.json"]),
        "block_three_dims": (lambda c: block(c, [24, 40, 1]), ["config.json"]),
        "block_negative": (lambda c: block(c, [-24, 40]), ["config.json"]),
        "block_float": (lambda c: block(c, [24.5, 40]), ["config.json"]),
        "block_string": (lambda c: block(c, "24x40"), ["config.json"]),
        "block_huge": (lambda c: block(c, [2 ** 62, 40]), [(QS, "config.json")]),
        "scale_dtype_f8": (lambda c: st_edit(c.p("q/model.safetensors"), lambda t: t.__setitem__(
            QS, ("F8_E4M3", t[QS][1], t[QS][2][: len(t[QS][2]) // 2]))), [QS]),
        "scale_dtype_i32": (lambda c: st_edit(c.p("q/model.safetensors"), lambda t: t.__setitem__(
            QS, ("I32", [3, 1], t[QS][2][:12]))), [QS]),
    }
    for what, (fn, mention) in lies.items():
        for cmd in ("merge", "dequantize"):
            c = mk(f"r3_fp8ct_{what}_{cmd}")
            fn(c)
            argv = (["merge", "--base", "q", "--adapter", "ad", "--out", "o", "--quant", "keep"] if cmd == "merge"
                    else ["dequantize", "q", "--out", "o"])
            # The input file is named (the output's name was given for a NaN weight byte).
            run(c, argv, mention=mention + (["q/model.safetensors"] if mention[0] in (QS, QW) else []))
    # A zero scale: compressed-tensors clamps scales to eps, so no producer writes one; a clean
    # refusal or a merge whose result is finite are both acceptable.
    for what, raw in (("scale_zero", b"\x00\x00"), ("scale_neg", bf16(-0.01)), ("scale_subnormal", b"\x01\x00")):
        c = mk(f"r3_fp8ct_{what}")
        set_scale(c, 0, raw)
        p = run_either(c, ["merge", "--base", "q", "--adapter", "ad", "--out", "o", "--quant", "keep"])
        if p.returncode == 0:
            t, _ = st_tensors(c.p("o/model.safetensors")) if os.path.exists(c.p("o/model.safetensors")) else ({}, None)
            s = t.get(QS)
            if s is not None:
                vals = [struct.unpack("<f", b"\0\0" + s[2][i:i + 2])[0] for i in range(0, len(s[2]), 2)]
                if any(v != v or v in (float("inf"), float("-inf")) or v <= 0 for v in vals):
                    violation(c.name, "merged scales are not finite and positive", str(vals))


# ---------------------------------------------------------------- what rounds 1-2 did not try
@case
def round3_misc():
    WQ = "model.layers.0.self_attn.q_proj.weight"
    # A sharded base that defines one tensor in two shards (the index names one of them).
    for what in ("dup_other_shard", "index_names_missing_shard_tensor", "index_extra_key_unknown_file",
                 "index_weight_map_not_object", "index_shard_absolute", "index_shard_dotdot"):
        c = Case(f"r3_sharded_{what}", ("llama/base_sharded", "base"), (QV, "qv"))
        idx = json.load(open(c.p("base/model.safetensors.index.json")))
        wm = idx["weight_map"]
        home = wm[WQ]
        other = next(f for f in sorted(set(wm.values())) if f != home)
        if what == "dup_other_shard":
            t, _ = st_tensors(c.p("base", home))
            st_edit(c.p("base", other), lambda o: o.__setitem__(WQ, t[WQ]))
            mention = [WQ]
        elif what == "index_names_missing_shard_tensor":
            wm[WQ] = other
            mention = [WQ]
        elif what == "index_extra_key_unknown_file":
            wm["model.extra.weight"] = "model-00009-of-00004.safetensors"
            mention = ["model-00009-of-00004.safetensors"]
        elif what == "index_weight_map_not_object":
            idx["weight_map"] = list(wm.items())
            mention = ["model.safetensors.index.json"]
        elif what == "index_shard_absolute":
            wm[WQ] = os.path.join(FX, "llama/base_sharded", home)
            mention = [("model.safetensors.index.json", WQ)]
        else:
            wm[WQ] = "../base/" + home
            mention = [("model.safetensors.index.json", WQ)]
        json.dump(idx, open(c.p("base/model.safetensors.index.json"), "w"))
        run(c, ["merge", "--base", "base", "--adapter", "qv", "--out", "o"], mention=mention)
        run(c, ["merge", "--base", "base", "--adapter", "qv", "--out", "o", "--part", "1/2"], mention=mention)
    # A kohya file naming one module in two conventions (kohya and PEFT/diffusers) at once.
    src = os.path.join(FX, "kohya/te_lora.safetensors")
    t, meta = st_tensors(src)
    down = next(k for k in t if k.endswith(".lora_down.weight"))
    mod = down[: -len(".lora_down.weight")]
    for what in ("peft_names", "lora_A_suffix", "dup_alpha"):
        c = Case(f"r3_kohya_mixed_{what}")
        t2 = dict(t)
        if what == "lora_A_suffix":
            t2[mod + ".lora_A.weight"] = t[down]
            t2[mod + ".lora_B.weight"] = t[mod + ".lora_up.weight"]
        elif what == "dup_alpha":
            t2[mod + ".alpha"] = ("F32", [], struct.pack("<f", 4.0))
            t2[mod + ".lora_down.alpha"] = ("F32", [], struct.pack("<f", 8.0))
        else:
            # The same text-encoder module in diffusers-PEFT naming beside its kohya name.
            parts = mod[len("lora_te_"):] if mod.startswith("lora_te_") else mod
            peft = "text_encoder." + parts.replace("text_model_encoder_layers_", "text_model.encoder.layers.") \
                .replace("_self_attn_", ".self_attn.").replace("_mlp_", ".mlp.")
            t2[peft + ".lora_A.weight"] = t[down]
            t2[peft + ".lora_B.weight"] = t[mod + ".lora_up.weight"]
        st_build(c.p("k.safetensors"), t2, meta)
        run(c, ["convert", "k.safetensors", "--to", "peft", "--out", "o"], mention=["k.safetensors"])
    # A PEFT adapter file that holds one module twice, under two adapter names.
    c = Case("r3_peft_two_adapter_names", (QV, "qv"))
    st_edit(c.p("qv/adapter_model.safetensors"), lambda t: [t.__setitem__(k.replace("lora_A.weight", "lora_A.other.weight"), v)
                                                           for k, v in list(t.items()) if "q_proj.lora_A" in k])
    run(c, ["resize", "qv", "--rank", "2", "--out", "o"], mention=["adapter_model.safetensors"])
    # A safetensors header that repeats a key (JSON keeps the last): refused, not silently read.
    c = Case("r3_st_duplicate_key", (QV, "qv"))
    f = c.p("qv/adapter_model.safetensors")
    h, data = st_read(f)
    k = next(x for x in h if x != "__metadata__")
    raw = json.dumps(h)
    entry = json.dumps({k: h[k]})[1:-1]
    st_write(f, h, data, raw_header=("{" + entry + ", " + raw[1:]).encode())
    run(c, ["inspect", "qv"], mention=[("adapter_model.safetensors",)])


@case
def gguf_duplicates():
    """A GGUF base that names one tensor twice, or one metadata key twice (same-length names
    swapped in place; llama.cpp's gguf_init_from_file refuses both: "duplicate tensor name",
    "duplicate key", ggml/src/gguf.cpp)."""
    src = open(os.path.join(FX, "gguf/llama_f32.gguf"), "rb").read()
    lies = {
        "dup_tensor": (b"blk.0.attn_k.weight", b"blk.0.attn_q.weight", ["blk.0.attn_q.weight"]),
        "dup_tensor_other_layer": (b"blk.1.attn_q.weight", b"blk.0.attn_q.weight", ["blk.0.attn_q.weight"]),
        "dup_key": (b"llama.rope.dimension_count", b"llama.attention.head_count", ["llama.attention.head_count"]),
        "dup_key_other_type": (b"llama.context_length", b"general.architecture", ["general.architecture"]),
    }
    for what, (old, new, mention) in lies.items():
        if src.count(old) != 1:
            print(f"note: gguf_{what}: {old!r} occurs {src.count(old)} times; case skipped")
            STATS["skipped"] += 1
            continue
        c = Case(f"r3_gguf_{what}", (QV, "qv"))
        open(c.p("b.gguf"), "wb").write(src.replace(old, new))
        run(c, ["merge", "--base", "b.gguf", "--adapter", "qv", "--out", "o.gguf"], mention=["b.gguf"] + mention)
        run(c, ["inspect", "b.gguf"], mention=["b.gguf"] + mention)
