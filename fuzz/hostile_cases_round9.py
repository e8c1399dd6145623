"""Round-9 cases of fuzz/hostile_round.py: what rounds 1-8 left out.

Rounds 1-8 covered (see hostile_round.py and the docstrings of hostile_cases_round7.py and
hostile_cases_round8.py): lies in every input format (safetensors headers, sharded indexes,
PEFT/kohya/LyCORIS/GGUF adapters, quantized bases, configs, tokenizers, trainer states, part
manifests, recipes), sizes no file can back, names (NUL, newline, 64 KiB, Unicode forms), output
paths onto inputs in every spelling, existing outputs, read-only and full disks, `ulimit -f`,
`-n`, `-v` (one 50 MB merge and four small commands), signals during every writing command,
concurrent writers, inputs truncated while mapped (a merge's base and shards, a GGUF under
inspect). What they missed, tried here:
  * oom_every_reader: `ulimit -v` 1 GiB on every command that reads an input holding one
    512 MiB tensor (a sparse file: it costs no disk) that it must decode whole (f32: 1 GiB);
    round 8 counted such aborts as "known" (Rust's "memory allocation of N bytes failed" names
    no file); now they must be one line naming the file (and the tensor), exit 2;
  * gguf_alpha_types: `adapter.lora.alpha` stored as another GGUF type than FLOAT32 (llama.cpp's
    gguf_get_val_f32 asserts the type, so llama.cpp aborts on them; convert_lora_to_gguf.py
    writes add_float32): U8, I32 negative, U64 max, F64, BOOL, an array, an empty string, U32,
    U16 0: a merge must refuse each naming the key (found: integers and F64 were read as the
    alpha, U64 2^64-1 merged with exit 0; I32 -8 was refused as "not a finite number");
  * gguf_split_onto_input: a split GGUF output (`--max-shard-size`) whose shard names are those
    of the split base being read, and a single output named like one of its shards;
  * recipe_scale: a recipe of 10,000 steps whose last is malformed (refused before any step
    runs), steps referring to each other in a cycle, an output that is an earlier step's input
    through `..`;
  * st_metadata_values: safetensors `__metadata__` holding numbers, null, lists, objects,
    booleans (the safetensors library refuses them: its metadata is str -> str) or 10^6
    entries, in a base, an adapter and a GGUF-less convert; a run that succeeds must write
    string metadata only;
  * diff_symlinks: `diff` of a file and a symlink to it, a folder and a symlink to it;
  * part_numbers: `--part` of 0/0, 3/2, 2^64/2, 1/2^64, 1/0, 0x1/2, 1/2/3, -1/2, an Arabic-Indic
    digit; 1/2^32 and (2^64-1)/(2^64-1) (more parts than files), +1/2, " 1 / 2 " must be read;
  * check_fix_onto_input: `check --fix --out` onto the checked adapter (its folder, its
    safetensors, a `..` spelling, a symlink to it);
  * json_duplicates: adapter_config.json and config.json repeating a key with another value
    (Python's json keeps the last), and a number 1e400 for `r`;
  * thread_counts: every writing command under RAYON_NUM_THREADS 1, 2 and 7: byte-identical
    outputs (the rounds before compared two runs on one thread count only).
"""
import json, os, resource, shutil, struct, subprocess

from hostile_cases_round3 import big_merge, big_model
from hostile_cases_round5 import MERGE_G, either, gcase, gedit
from hostile_cases_round8 import limited
from hostile_gguf import ARR, F32, STR, U16, U32, I32
from hostile_lib import (BASE, LK, QV, STATS, TUNED, Case, case, run, run_either, setup_only, st_read, st_write,
                         violation)

U8, BOOL, U64, F64 = 0, 7, 10, 12


# ---------------------------------------------------------------- ulimit -v on every reader
def huge_adapter(c, rel="ad"):
    """A PEFT adapter whose lora_A is F16 [1, 2^28] (512 MiB, sparse): its f32 copy is 1 GiB."""
    k = 1 << 28
    n = 2 * k
    a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    b = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    h = {a: {"dtype": "F16", "shape": [1, k], "data_offsets": [0, n]},
         b: {"dtype": "F16", "shape": [2, 1], "data_offsets": [n, n + 4]}}
    os.makedirs(c.p(rel), exist_ok=True)
    hb = json.dumps(h).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(c.p(rel, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        f.truncate(8 + len(hb) + n + 4)
    json.dump({"peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": ["q_proj"]},
              open(c.p(rel, "adapter_config.json"), "w"))
    return a


def huge_base(c, rel="hb.safetensors"):
    """A one-tensor checkpoint of F16 [16384, 16384] (512 MiB, sparse)."""
    n = 16384 * 16384 * 2
    name = "model.layers.0.self_attn.q_proj.weight"
    hb = json.dumps({name: {"dtype": "F16", "shape": [16384, 16384], "data_offsets": [0, n]}}).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(c.p(rel), "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        f.truncate(8 + len(hb) + n)
    return name


@case
def oom_every_reader():
    lim = {resource.RLIMIT_AS: 1 << 30}
    c = Case("r9_oom_adapter", (BASE, "base"))
    a = huge_adapter(c)
    for argv in (["convert", "ad", "--to", "kohya", "--out", "o.safetensors"],
                 ["resize", "ad", "--rank", "1", "--out", "o"],
                 ["combine", "--adapter", "ad", "--adapter", "ad", "--method", "cat", "--out", "o"],
                 ["combine", "--adapter", "ad", "--adapter", "ad", "--method", "linear", "--out", "o"],
                 ["check", "ad", "--base", "base", "--target", "vllm", "--fix", "--out", "o"],
                 ["inspect", "ad", "--spectrum"],
                 ["diff", "ad", "ad"]):
        p = limited(c, argv, lim, mention=["adapter_model.safetensors"], rc=(2,))
        if p is not None and "out of memory" in p.stderr and a not in p.stderr:
            violation(c.name, "an out-of-memory line does not name the tensor", p.stderr.strip()[:300])
    c = Case("r9_oom_base", (QV, "qv"))
    huge_base(c)
    for argv in (["diff", "hb.safetensors", "hb.safetensors"],
                 ["inspect", "hb.safetensors", "--spectrum"],
                 ["extract", "--base", "hb.safetensors", "--tuned", "hb.safetensors", "--rank", "2", "--out", "o",
                  "--device", "cpu"],
                 ["dequantize", "hb.safetensors", "--out", "o.safetensors"]):
        limited(c, argv, lim, mention=["hb.safetensors"], rc=(1, 2) if argv[0] == "diff" else (2,))


# ---------------------------------------------------------------- GGUF adapter alpha types
@case
def gguf_alpha_types():
    for what, ty, val in (("u8", U8, 8), ("i32_negative", I32, -8), ("u64_max", U64, (1 << 64) - 1),
                          ("f64", F64, 16.0), ("bool", BOOL, True), ("array", ARR, (F32, [8.0, 16.0])),
                          ("array_empty", ARR, (F32, [])), ("string_empty", STR, ""), ("u32", U32, 16),
                          ("u16_zero", U16, 0)):
        c = gcase("r9_alpha_" + what)
        gedit(c, "a.gguf", lambda g, ty=ty, val=val: g.set("adapter.lora.alpha", ty, val))
        run(c, MERGE_G, mention=["a.gguf", "adapter.lora.alpha"])
        either(c, ["inspect", "a.gguf"])
        either(c, ["diff", "a.gguf", "a.gguf"], refusals=(1, 2))
        either(c, ["check", "a.gguf"], refusals=(1, 2))


# ---------------------------------------------------------------- split GGUF outputs onto inputs
@case
def gguf_split_onto_input():
    c = gcase("r9_split_onto_input")
    setup_only(c, ["merge", "--base", "b.gguf", "--adapter", "pa", "--out", "m.gguf", "--max-shard-size", "100KB",
                   "--quiet"])
    shards = sorted(n for n in os.listdir(c.dir) if n.startswith("m-"))
    if len(shards) < 2:
        violation(c.name, "harness: the split set is not several files", str(shards))
        return
    for argv in (["merge", "--base", shards[0], "--adapter", "pa", "--out", "m.gguf", "--max-shard-size", "100KB"],
                 ["merge", "--base", shards[0], "--adapter", "a.gguf", "--out", "m.gguf", "--max-shard-size",
                  "100KB"],
                 ["merge", "--base", shards[0], "--adapter", "pa", "--out", shards[1]],
                 ["merge", "--base", shards[0], "--adapter", "pa", "--out", shards[-1]],
                 ["merge", "--base", shards[0], "--adapter", "pa", "--out", "m.gguf", "--max-shard-size", "100KB",
                  "--part", "1/2"],
                 ["merge", "--base", shards[0], "--adapter", "pa", "--out", "m.gguf", "--max-shard-size", "100KB",
                  "--part", "2/2"],
                 ["convert", "pa", "--to", "gguf", "--base", shards[0], "--out", shards[1]]):
        run(c, argv, mention=[tuple(shards) + ("m.gguf",)], rc=(2,))
    # Another shard size names other files (m-0000N-of-00006): a fresh output beside the input.
    before = set(os.listdir(c.dir))
    run_either(c, ["merge", "--base", shards[0], "--adapter", "pa", "--out", "./m.gguf", "--max-shard-size", "60KB"])
    for n in set(os.listdir(c.dir)) - before:
        os.remove(c.p(n))


# ---------------------------------------------------------------- recipes at scale and in cycles
@case
def recipe_scale():
    diff = '[[step]]\nname = "d%d"\ncommand = "diff"\na = "base"\nb = "base"\n'
    merge = '[[step]]\nname = "%s"\ncommand = "merge"\nbase = "%s"\nadapter = ["qv"]\nout = "%s"\n'
    cases = {
        "10k_last_unknown": "".join(diff % i for i in range(9999)) + '[[step]]\nname = "x"\ncommand = "rm"\n',
        "10k_last_missing_input": "".join(diff % i for i in range(9999))
        + '[[step]]\nname = "x"\ncommand = "diff"\na = "base"\nb = "nope"\n',
        "10k_two_outputs_alike": merge % ("m0", "base", "o") + "".join(diff % i for i in range(9998))
        + merge % ("m1", "base", "o"),
        "cycle_two": merge % ("a", "${b.out}", "o1") + merge % ("b", "${a.out}", "o2"),
        "cycle_three": merge % ("a", "${c.out}", "o1") + merge % ("b", "${a.out}", "o2")
        + merge % ("c", "${b.out}", "o3"),
        "second_out_is_first_input_dotdot": merge % ("a", "base", "o1") + merge % ("b", "${a.out}", "o1/../base"),
        "second_out_is_first_input_abs": merge % ("a", "base", "o1") + merge % ("b", "${a.out}", "ABS/base"),
        "out_dotdot_escape_onto_qv": merge % ("a", "base", "nope/../qv"),
        "step_name_dotdot": merge % ("..", "base", "o1"),
        "step_name_empty": merge % ("", "base", "o1"),
    }
    for what, body in cases.items():
        c = Case(f"r9_recipe_{what}", (BASE, "base"), (QV, "qv"))
        c.write("r.toml", body.replace("ABS", c.dir))
        run(c, ["run", "r.toml", "--dry-run"], mention=[("r.toml", "base", "qv", "nope", "o1")])
        run(c, ["run", "r.toml"], mention=[("r.toml", "base", "qv", "nope", "o1")])


# ---------------------------------------------------------------- safetensors __metadata__ values
def only_string_metadata(c, rel):
    for dp, _, fs in os.walk(c.p(rel)) if os.path.isdir(c.p(rel)) else [(os.path.dirname(c.p(rel)), [],
                                                                        [os.path.basename(rel)])]:
        for f in fs:
            if f.endswith(".safetensors"):
                h, _ = st_read(os.path.join(dp, f))
                m = h.get("__metadata__", {})
                if not isinstance(m, dict) or any(not isinstance(v, str) for v in m.values()):
                    violation(c.name, "an output's __metadata__ holds non-string values", str(m)[:200])


@case
def st_metadata_values():
    metas = {"int": {"format": "pt", "n": 5}, "null": {"format": None}, "list": {"format": ["pt"]},
             "object": {"format": {"a": "b"}}, "bool": {"x": True}, "not_object": ["pt"], "string": "pt",
             "float": {"x": 1.5}, "million": {f"k{i}": "v" for i in range(10 ** 6)}}
    for what, meta in metas.items():
        for target in ("base", "adapter"):
            c = Case(f"r9_meta_{what}_{target}", (BASE, "base"), (QV, "qv"))
            rel = "base/model.safetensors" if target == "base" else "qv/adapter_model.safetensors"
            h, data = st_read(c.p(rel))
            h["__metadata__"] = meta
            st_write(c.p(rel), h, data)
            for argv, out in ((["merge", "--base", "base", "--adapter", "qv", "--out", "o"], "o"),
                              (["convert", "qv", "--to", "kohya", "--out", "k.safetensors"], "k.safetensors"),
                              (["resize", "qv", "--rank", "4", "--out", "r"], "r"),
                              (["inspect", rel], None), (["diff", rel, rel], None)):
                before = set(os.listdir(c.dir))
                p = run_either(c, argv, refusals=(1, 2) if argv[0] == "diff" else (2,))
                if p.returncode == 2 and os.path.basename(rel) not in p.stderr and rel.split("/")[0] not in p.stderr:
                    violation(c.name, "refusal does not name the file", p.stderr.strip()[:300])
                if p.returncode == 0 and out:
                    only_string_metadata(c, out)
                for n in set(os.listdir(c.dir)) - before:
                    q = c.p(n)
                    shutil.rmtree(q) if os.path.isdir(q) else os.remove(q)


# ---------------------------------------------------------------- diff of a file and its symlink
@case
def diff_symlinks():
    c = Case("r9_diff_symlink", (BASE, "base"), (QV, "qv"))
    os.symlink("base/model.safetensors", c.p("link.safetensors"))
    os.symlink("base", c.p("linkdir"))
    os.symlink("qv", c.p("linkqv"))
    for a, b in (("base/model.safetensors", "link.safetensors"), ("base", "linkdir"), ("linkdir", "linkdir"),
                 ("qv", "linkqv"), ("link.safetensors", "base")):
        p = run_either(c, ["diff", a, b], refusals=(1, 2))
        if p.returncode != 0:
            violation(c.name, f"diff {a} {b} of one file under two names: rc={p.returncode}", p.stderr[:300])


# ---------------------------------------------------------------- --part numbers
@case
def part_numbers():
    c = Case("r9_part_numbers", ("llama/base_sharded", "base"), (QV, "qv"))
    merge = ["merge", "--base", "base", "--adapter", "qv", "--out", "o", "--part"]
    for part in ("0/0", "3/2", "18446744073709551616/2", "1/18446744073709551616", "1/0", "0x1/2", "1/2/3", "/2",
                 "1/", "\u0661/2", "-1/2", "1/-2"):
        run(c, merge + [part], mention=[("--part", part, part.split("/")[0])])
    # Accepted as valid: more parts than output files (the parts past them write only their
    # manifest: a fixed job array over a smaller model), and what Rust's integer parser reads
    # (a leading `+`, spaces around the numbers).
    for part in ("1/4294967296", "18446744073709551615/18446744073709551615", "+1/2", " 1 / 2 "):
        before = set(os.listdir(c.dir))
        run_either(c, merge + [part])
        for n in set(os.listdir(c.dir)) - before:
            shutil.rmtree(c.p(n)) if os.path.isdir(c.p(n)) else os.remove(c.p(n))


# ---------------------------------------------------------------- check --fix onto the checked adapter
@case
def check_fix_onto_input():
    c = Case("r9_fix_onto_input", ("llama/adapters/dora", "qv"), (BASE, "base"))
    os.symlink("qv", c.p("linkqv"))
    fix = ["check", "qv", "--base", "base", "--target", "vllm", "--fix", "--out"]
    for out in ("qv", "qv/", "./qv", "base/../qv", "qv/adapter_model.safetensors", "linkqv", "qv/.",
                "linkqv/adapter_model.safetensors"):
        run(c, fix + [out], mention=[("qv", "linkqv")])


# ---------------------------------------------------------------- JSON duplicates and huge numbers
@case
def json_duplicates():
    def raw_edit(c, rel, old, new):
        p = c.p(rel)
        t = open(p).read()
        assert old in t, (rel, old)
        open(p, "w").write(t.replace(old, new, 1))
    for what, rel, old, new in (
        ("adapter_r_twice", "qv/adapter_config.json", '"r": 8', '"r": 8, "r": 4'),
        ("adapter_r_twice_rev", "qv/adapter_config.json", '"r": 8', '"r": 4, "r": 8'),
        ("adapter_alpha_twice", "qv/adapter_config.json", '"lora_alpha": ', '"lora_alpha": 1e400, "lora_alpha": '),
        ("adapter_r_1e400", "qv/adapter_config.json", '"r": 8', '"r": 1e400'),
        ("adapter_r_huge_int", "qv/adapter_config.json", '"r": 8', '"r": ' + "9" * 400),
        ("config_hidden_twice", "base/config.json", '"hidden_size": ', '"hidden_size": 7, "hidden_size": '),
        ("config_hidden_1e400", "base/config.json", '"hidden_size": ', '"hidden_size": 1e400, "x": '),
    ):
        c = Case(f"r9_json_{what}", (BASE, "base"), (QV, "qv"))
        if "qv/" in rel:
            cfg = json.load(open(c.p(rel)))
            json.dump(cfg, open(c.p(rel), "w"))  # one spelling: `"r": 8`
        else:
            json.dump(json.load(open(c.p(rel))), open(c.p(rel), "w"))
        try:
            raw_edit(c, rel, old, new)
        except AssertionError as e:
            violation(c.name, "harness: key not found", repr(e))
            continue
        for argv in (["merge", "--base", "base", "--adapter", "qv", "--out", "o"],
                     ["convert", "qv", "--to", "kohya", "--out", "k.safetensors"],
                     ["check", "qv"], ["inspect", "qv"]):
            p = run_either(c, argv, refusals=(1, 2) if argv[0] == "check" else (2,))
            if p.returncode == 2 and os.path.basename(rel) not in p.stderr:
                violation(c.name, f"{argv[0]}: refusal does not name {os.path.basename(rel)}", p.stderr.strip()[:300])
            for n in ("o", "k.safetensors"):
                if os.path.exists(c.p(n)):
                    q = c.p(n)
                    shutil.rmtree(q) if os.path.isdir(q) else os.remove(q)


# ---------------------------------------------------------------- same output on every thread count
def _outputs(c, o):
    q = c.p(o)
    snap = {}
    walk = os.walk(q) if os.path.isdir(q) else [(os.path.dirname(q), [], [os.path.basename(q)])]
    for dp, _, fs in walk:
        for f in fs:
            if ".lorakit-step" in f:
                continue
            b = open(os.path.join(dp, f), "rb").read()
            if f.endswith(".json") or f.endswith(".safetensors") or f.endswith(".gguf"):
                b = b.replace(o.encode(), b"OUT")
            snap[os.path.relpath(os.path.join(dp, f), q)] = b
    return snap


@case
def thread_counts():
    """Every writing command with RAYON_NUM_THREADS 1, 2 and 7 (a user's laptop, this machine, a
    server): the outputs must be byte-identical (README: same inputs, byte-identical output)."""
    c = Case("r9_threads", (BASE, "base"), (QV, "qv"), (TUNED, "tuned.safetensors"), ("llama/adapters/dora", "dora"),
             ("quant/nf4", "nf4"), ("gguf/llamacpp/hf_phi3_base.f32.gguf", "b.gguf"), ("gguf/hf_phi3/lora", "pa"),
             ("text/tiny_ids.safetensors", "ids.safetensors"))
    specs = {
        "merge": ["merge", "--base", "base", "--adapter", "qv", "--out", "OUT", "--device", "cpu"],
        "merge_dora": ["merge", "--base", "base", "--adapter", "dora", "--out", "OUT", "--device", "cpu"],
        "merge_gguf": ["merge", "--base", "b.gguf", "--adapter", "pa", "--out", "OUT.gguf"],
        "extract": ["extract", "--base", "base", "--tuned", "tuned.safetensors", "--rank", "4", "--out", "OUT",
                    "--device", "cpu"],
        "extract_energy": ["extract", "--base", "base", "--tuned", "tuned.safetensors", "--energy", "0.9", "--out",
                           "OUT", "--device", "cpu"],
        "resize": ["resize", "qv", "--rank", "3", "--out", "OUT"],
        "combine_svd": ["combine", "--adapter", "qv", "--adapter", "r3", "--method", "svd", "--rank", "4", "--out",
                        "OUT"],
        "combine_ties": ["combine", "--adapter", "qv", "--adapter", "qv", "--method", "ties", "--density", "0.5",
                         "--out", "OUT"],
        "train": ["train", "--model", "base", "--data", "ids.safetensors", "--seq-len", "8", "--batch", "2", "--steps",
                  "2", "--rank", "4", "--out", "OUT"],
        "convert_kohya": ["convert", "qv", "--to", "kohya", "--out", "OUT.safetensors"],
        "convert_gguf": ["convert", "pa", "--to", "gguf", "--base", "b.gguf", "--out", "OUT.gguf"],
        "dequantize": ["dequantize", "nf4", "--out", "OUT"],
        "check_fix": ["check", "dora", "--base", "base", "--target", "vllm", "--fix", "--out", "OUT"],
    }
    setup_only(c, ["resize", "qv", "--rank", "3", "--out", "r3", "--quiet"])
    _same_on_threads(c, specs)
    # 1024×1024 weights: work the kernels split between threads.
    c = Case("r9_threads_big")
    big_model(c, layers=2)
    setup_only(c, big_merge("tuned.safetensors") + ["--device", "cpu"])
    _same_on_threads(c, {
        "merge": big_merge("OUT") + ["--device", "cpu"],
        "extract": ["extract", "--base", "big/model.safetensors", "--tuned", "tuned.safetensors", "--rank", "8",
                    "--out", "OUT", "--device", "cpu"],
        "resize": ["resize", "bad", "--rank", "4", "--out", "OUT"],
        "combine_svd": ["combine", "--adapter", "bad", "--adapter", "bad", "--method", "svd", "--rank", "8", "--out",
                        "OUT"],
    })


def _same_on_threads(c, specs):
    for what, argv in specs.items():
        STATS["cases"] += 1
        snaps = []
        for n in (1, 2, 7):
            o = f"o_{what}_{n}"
            args = [a.replace("OUT", o) for a in argv]
            p = subprocess.run([LK] + args, cwd=c.dir, capture_output=True, text=True, timeout=300, errors="replace",
                               env=dict(os.environ, RAYON_NUM_THREADS=str(n)))
            if p.returncode not in (0, 1) or (p.returncode == 1 and argv[0] != "check"):
                violation(c.name, f"{what}: a valid run failed with {n} threads", p.stderr.strip()[:300])
                break
            out = [a for a in args if a.startswith(o)][0]
            snaps.append(_outputs(c, out))
        if len(snaps) == 3 and not snaps[0]:
            violation(c.name, f"harness: {what} wrote nothing to compare", "")
        if len(snaps) == 3:
            for n, s in zip((2, 7), snaps[1:]):
                if s != snaps[0]:
                    bad = sorted(k for k in set(s) | set(snaps[0]) if s.get(k) != snaps[0].get(k))
                    violation(c.name, f"{what}: the output with {n} threads differs from 1 thread's", str(bad)[:300])


# ---------------------------------------------------------------- names the earlier rounds did not draw
@case
def names_more():
    """Tensor names of 1 MiB, empty, holding a lone UTF-16 surrogate escape (`\\ud800`: Python's
    json reads it, the safetensors library refuses it), an RTL override, and keys that
    collide with the header's own: in a base and in an adapter; surrogates in the configs too."""
    def rename(rel, old_part, new_part):
        def fn(c):
            p = c.p(rel)
            h, data = st_read(p)
            k = next(k for k in h if old_part in k)
            raw = json.dumps({**{kk: v for kk, v in h.items() if kk != k}, "@@": h[k]})
            st_write(p, None, data, raw_header=raw.replace('"@@"', json.dumps(k.replace(old_part, new_part))
                                                           if not new_part.startswith("RAW:") else
                                                           '"' + k.replace(old_part, new_part[4:]) + '"').encode())
        return fn
    lies = {
        "base_1mib": ("base/model.safetensors", "q_proj", "q_proj" + "x" * (1 << 20)),
        "base_empty": ("base/model.safetensors", "model.layers.0.self_attn.q_proj.weight", ""),
        "base_surrogate": ("base/model.safetensors", "q_proj", "RAW:q_proj\\ud800"),
        "base_rtl": ("base/model.safetensors", "q_proj", "q_\u202eproj"),
        "base_metadata_tensor": ("base/model.safetensors", "model.norm.weight", "__metadata__x"),
        "adapter_1mib": ("qv/adapter_model.safetensors", "q_proj", "q_proj" + "y" * (1 << 20)),
        "adapter_surrogate": ("qv/adapter_model.safetensors", "q_proj", "RAW:q_proj\\udfff"),
        "adapter_surrogate_pair": ("qv/adapter_model.safetensors", "q_proj", "RAW:q_proj\\ud83d\\ude00"),
        "adapter_empty": ("qv/adapter_model.safetensors", "base_model.model.model.layers.0.self_attn.q_proj.lora_A"
                                                            ".weight", ""),
        "adapter_rtl": ("qv/adapter_model.safetensors", "q_proj", "q_\u202eproj"),
    }
    for what, (rel, old, new) in lies.items():
        c = Case(f"r9_names_{what}", (BASE, "base"), (QV, "qv"))
        rename(rel, old, new)(c)
        for argv in (["merge", "--base", "base", "--adapter", "qv", "--out", "o"],
                     ["convert", "qv", "--to", "kohya", "--out", "k.safetensors"],
                     ["inspect", rel.split("/")[0]], ["check", "qv"], ["diff", rel, rel]):
            before = set(os.listdir(c.dir))
            p = run_either(c, argv, refusals=(1, 2) if argv[0] in ("check", "diff") else (2,))
            if p.returncode == 2 and os.path.basename(rel) not in p.stderr and rel.split("/")[0] not in p.stderr:
                violation(c.name, f"{argv[0]}: refusal does not name the file", p.stderr.strip()[:300])
            if len(p.stderr) > 20000:
                violation(c.name, f"{argv[0]}: stderr of {len(p.stderr)} bytes", p.stderr[:200])
            for n in set(os.listdir(c.dir)) - before:
                q = c.p(n)
                shutil.rmtree(q) if os.path.isdir(q) else os.remove(q)
    for what, old, new in (("target_surrogate", '"q_proj"', '"q_proj\\ud800"'),
                           ("peft_type_surrogate", '"LORA"', '"LORA\\udc00"')):
        c = Case(f"r9_names_config_{what}", (BASE, "base"), (QV, "qv"))
        t = open(c.p("qv/adapter_config.json")).read()
        t = json.dumps(json.loads(t))
        if old not in t:
            violation(c.name, "harness: key not found", old)
            continue
        open(c.p("qv/adapter_config.json"), "w").write(t.replace(old, new, 1))
        for argv in (["merge", "--base", "base", "--adapter", "qv", "--out", "o"], ["check", "qv"]):
            p = run_either(c, argv, refusals=(1, 2) if argv[0] == "check" else (2,))
            if p.returncode == 2 and "adapter_config.json" not in p.stderr:
                violation(c.name, f"{argv[0]}: refusal does not name adapter_config.json", p.stderr.strip()[:300])
            if os.path.exists(c.p("o")):
                shutil.rmtree(c.p("o"))
