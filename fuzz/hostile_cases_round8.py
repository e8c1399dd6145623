"""Round-8 cases of fuzz/hostile_round.py: the process's environment, not its input files.

Rounds 1-7 covered (see hostile_round.py and hostile_cases_round7.py): lies in every input
format, sizes no file can back (under a 3 GiB address-space limit), names, output paths, outputs
onto inputs, existing outputs, read-only and full disks, SIGINT/SIGTERM/SIGKILL during a merge
(and SIGINT/SIGTERM during extract and combine), direct I/O. What they missed, tried here:
  * file_size_limit: every writing command under `ulimit -f` (4 KiB, 64 KiB, 1 MiB): the write
    past it raised SIGXFSZ, whose default action killed the process;
  * open_files_limit: `ulimit -n` 4 to 12 on a sharded base (merge, inspect, diff, convert);
  * address_space_limit: `ulimit -v` 96 MiB to 1 GiB on a 50 MB merge and a 100 MB extract;
  * signals_more: SIGINT/SIGTERM/SIGHUP/SIGABRT/SIGKILL during resize, convert, extract,
    combine; after SIGKILL a rerun must write the same bytes as a clean run and leave nothing
    else;
  * concurrent_writers: two merges (or a merge and a convert) onto one --out at once, an inspect
    of an output being written;
  * truncated_while_mapped: a base or a shard truncated by another process while the merge
    reads it (and a GGUF truncated under inspect);
  * index_more: a sharded index naming one shard by two spellings (`./x`, `x`), by its absolute
    path, a tensor that no shard holds, a shard holding a tensor the index does not list;
  * config_more: PEFT configs whose targets contradict the tensors in ways round 6 did not draw
    (a target_modules regex matching lm_head only, a list naming another module, layers_to_
    transform and exclude_modules excluding the tensors' modules, alpha_pattern of a bool,
    list or object, rank_pattern for one module only that contradicts its tensors,
    modules_to_save naming a module the base lacks).

Results, 2026-12-06, debug build, as root (figures in hostile_round.py): against main's binary
at 3093fc0, 49 violated checks in 24 case folders; after this round's fixes 0. Fixed, tests in
tests/it/hostile8.rs: a write past `ulimit -f` (SIGXFSZ: death by signal, the temporary file
and the lock left), an abort (a failed allocation under `ulimit -v`, a SIGABRT from outside:
the temporary file, lock and created folders left), an input truncated while mapped (SIGBUS:
death by signal, no line, the temporary file and lock left).
Known (counted apart, printed): under `ulimit -v`, a failed infallible allocation aborts with
Rust's one line "memory allocation of N bytes failed", which names no file (exit 134); the
handler now removes what the run had begun, so no output, temporary file or lock is left.
"""
import json, os, resource, shutil, signal, struct, subprocess, time

from hostile_cases_round3 import big_merge, big_model
from hostile_lib import (BASE, FX, LK, QV, STATS, TUNED, WQ, Case, case, snapshot, st_build, st_tensors,
                         violation)

SH = "llama/base_sharded"
SHARD2 = "model-00002-of-00004.safetensors"
MERGE = ["merge", "--base", "base", "--adapter", "qv", "--out", "o"]


def _lines(p):
    return [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("warning")]


def _clean_new(c, before):
    for rel in sorted(set(snapshot(c.dir)) - set(before), reverse=True):
        q = c.p(rel)
        shutil.rmtree(q) if os.path.isdir(q) and not os.path.islink(q) else os.remove(q)


def limited(c, argv, limits, mention=(), rc=(2, 3), timeout=120, allow_ok=True, known_abort=False):
    """Runs lorakit under `limits` ({RLIMIT_x: value}): done (exit 0, no existing file changed;
    the outputs are removed afterwards) where `allow_ok`, or refused with an exit in `rc`, one
    line naming `mention`, nothing changed. `known_abort`: an abort on a failed allocation is
    counted as known (it names no file) but must leave nothing behind."""
    STATS["cases"] += 1

    def pre():
        for k, v in limits.items():
            resource.setrlimit(k, (v, v))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    before = snapshot(c.dir)
    try:
        p = subprocess.run([LK] + argv, cwd=c.dir, capture_output=True, text=True, timeout=timeout,
                           errors="replace", preexec_fn=pre)
    except subprocess.TimeoutExpired:
        violation(c.name, f"did not finish in {timeout} s", " ".join(argv)[:300])
        _clean_new(c, before)
        return None
    after = snapshot(c.dir)
    lines = _lines(p)
    # `check --fix` writes its output and exits 1 when the fixed adapter still fails a target.
    if allow_ok and (p.returncode == 0 or p.returncode == 1 and argv[0] == "check" and "--fix" in argv):
        changed = [k for k, v in before.items() if after.get(k) != v and not v.startswith("dir:")]
        if changed:
            violation(c.name, "a file that existed before was changed or removed", str(changed)[:400])
        _clean_new(c, before)
        return p
    if known_abort and p.returncode == -signal.SIGABRT and "memory allocation of" in p.stderr:
        STATS["known"] = STATS.get("known", 0) + 1
        print(f"known: {c.name}: aborted on a failed allocation ({lines[0] if lines else ''})")
    elif p.returncode not in rc:
        violation(c.name, f"rc={p.returncode} (want {rc}{' or 0' if allow_ok else ''})", p.stderr.strip()[-500:])
    elif "panicked" in p.stderr:
        violation(c.name, "panic", p.stderr[:500])
    elif len(lines) != 1:
        violation(c.name, f"{len(lines)}-line error", p.stderr[:500])
    else:
        missing = [m for m in mention if not any(x in lines[0] for x in ((m,) if isinstance(m, str) else m))]
        if missing:
            violation(c.name, f"message does not name {missing}", lines[0][:500])
    if after != before:
        violation(c.name, "the case folder changed", str(sorted(set(after.items()) ^ set(before.items())))[:500])
        _clean_new(c, before)
    return p


def outputs_of(c, out):
    """{relative path ("." for a file): bytes} of an output file or folder, JSON files left out
    (they name the output)."""
    q = c.p(out)
    if os.path.isfile(q):
        return {".": open(q, "rb").read()}
    snap = {}
    for dp, _, fs in os.walk(q):
        for f in fs:
            if not f.endswith(".json"):
                snap[os.path.relpath(os.path.join(dp, f), q)] = open(os.path.join(dp, f), "rb").read()
    return snap


# ---------------------------------------------------------------- ulimit -f
@case
def file_size_limit():
    # (name, fixtures, argv, output) for each writing command; outputs of 15 KB to 50 MB.
    specs = [
        ("merge_file", [(BASE, "base"), (QV, "qv")],
         ["merge", "--base", "base/model.safetensors", "--adapter", "qv", "--out", "o.safetensors"]),
        ("merge_folder", [(BASE, "base"), (QV, "qv")], MERGE),
        ("merge_sharded", [(SH, "base"), (QV, "qv")], MERGE),
        ("convert_kohya", [(QV, "qv")], ["convert", "qv", "--to", "kohya", "--out", "o.safetensors"]),
        ("resize", [(QV, "qv")], ["resize", "qv", "--rank", "4", "--out", "o"]),
        ("combine", [(QV, "qv")], ["combine", "--adapter", "qv", "--adapter", "qv", "--method", "cat", "--out",
                                      "o"]),
        ("extract", [(BASE, "base"), (TUNED, "tuned.safetensors")],
         ["extract", "--base", "base", "--tuned", "tuned.safetensors", "--rank", "4", "--out", "o", "--device", "cpu"]),
        ("dequantize", [("quant/nf4", "q")], ["dequantize", "q", "--out", "o"]),
        ("check_fix", [("llama/adapters/dora", "qv"), (BASE, "base")],
         ["check", "qv", "--base", "base", "--target", "vllm", "--fix", "--out", "o"]),
    ]
    for lim in (4 << 10, 64 << 10, 1 << 20):
        for name, copies, argv in specs:
            c = Case(f"r8_fsize_{lim >> 10}k_{name}", *copies)
            limited(c, argv, {resource.RLIMIT_FSIZE: lim}, mention=["o"], rc=(3,))
        c = Case(f"r8_fsize_{lim >> 10}k_big_merge")
        big_model(c, layers=12)
        for out in ("o.safetensors", "o"):
            limited(c, big_merge(out), {resource.RLIMIT_FSIZE: lim}, mention=["o", "File too large"], rc=(3,),
                    allow_ok=False)


# ---------------------------------------------------------------- ulimit -n
@case
def open_files_limit():
    for n in (4, 5, 6, 7, 8, 9, 10, 12):
        c = Case(f"r8_nofile_{n}", (SH, "base"), (QV, "qv"))
        for argv in (MERGE, ["inspect", "base"], ["diff", "base", "base"],
                     ["convert", "qv", "--to", "kohya", "--base", "base", "--out", "o.safetensors"]):
            limited(c, argv, {resource.RLIMIT_NOFILE: n},
                    mention=[("base", "qv", "o")], rc=(1, 2, 3) if argv[0] == "diff" else (2, 3))


# ---------------------------------------------------------------- ulimit -v
@case
def address_space_limit():
    c = Case("r8_as_big_merge")
    big_model(c, layers=12)
    for mib in (96, 128, 192, 256, 384, 512, 768, 1024):
        for out in ("o.safetensors", "o"):
            limited(c, big_merge(out), {resource.RLIMIT_AS: mib << 20}, mention=[("big", "bad", "o")],
                    known_abort=True)
    c = Case("r8_as_small", (SH, "base"), (QV, "qv"), (BASE, "flat"), (TUNED, "tuned.safetensors"))
    for mib in (96, 192, 384):
        for argv in (MERGE, ["resize", "qv", "--rank", "4", "--out", "o"], ["inspect", "base"],
                     ["extract", "--base", "flat", "--tuned", "tuned.safetensors", "--rank", "4", "--out", "o",
                      "--device", "cpu"]):
            limited(c, argv, {resource.RLIMIT_AS: mib << 20}, mention=[("base", "qv", "flat", "tuned", "o")],
                    known_abort=True)


# ---------------------------------------------------------------- signals during other commands
def big_adapter(c, n=1024, r=64, layers=12):
    """A rank-64 PEFT adapter on `layers` 1024×1024 modules (resize and convert of it take > 1 s)."""
    import random
    rnd = random.Random(8)
    row = struct.pack("<%df" % n, *[rnd.uniform(-1, 1) for _ in range(n)])
    a = {}
    for i in range(layers):
        a[f"base_model.model.layers.{i}.proj.lora_A.weight"] = ("F32", [r, n], row * r)
        a[f"base_model.model.layers.{i}.proj.lora_B.weight"] = ("F32", [n, r], (row[4 * i:] + row[:4 * i]) * r)
    os.makedirs(c.p("ad"), exist_ok=True)
    st_build(c.p("ad/adapter_model.safetensors"), a)
    json.dump({"peft_type": "LORA", "r": r, "lora_alpha": r, "target_modules": ["proj"]},
              open(c.p("ad/adapter_config.json"), "w"))


def big_tuned(c):
    big_model(c, layers=6)
    t, _ = st_tensors(c.p("big/model.safetensors"))
    st_build(c.p("tuned.safetensors"), {k: (dt, sh, b[4:] + b[:4]) for k, (dt, sh, b) in t.items()})


SIG_CMDS = {
    "resize": (big_adapter, ["resize", "ad", "--rank", "16", "--out", "OUT", "--quiet"]),
    "convert": (big_adapter, ["convert", "ad", "--to", "kohya", "--out", "OUT.safetensors", "--quiet"]),
    "combine": (big_adapter, ["combine", "--adapter", "ad", "--adapter", "ad", "--method", "svd", "--rank", "16",
                              "--out", "OUT", "--quiet"]),
    "extract": (big_tuned, ["extract", "--base", "big/model.safetensors", "--tuned", "tuned.safetensors", "--rank",
                            "16", "--out", "OUT", "--device", "cpu", "--quiet"]),
}


def _sub(argv, out):
    return [a.replace("OUT", out) for a in argv]


@case
def signals_more():
    for cmd, (make, argv) in SIG_CMDS.items():
        c = Case(f"r8_sig_{cmd}")
        make(c)
        # A clean run's output, the reference for the rerun after SIGKILL.
        p = subprocess.run([LK] + _sub(argv, "ref"), cwd=c.dir, capture_output=True, text=True)
        if p.returncode != 0:
            violation(c.name, "the clean run failed", p.stderr[:300])
            continue
        ref_out = "ref.safetensors" if cmd == "convert" else "ref"
        ref = outputs_of(c, ref_out)
        base = snapshot(c.dir)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGABRT, signal.SIGKILL):
            for delay in (0.1, 0.3) if cmd == "convert" else (0.3, 0.9):
                STATS["cases"] += 1
                name = f"{c.name}_{sig.name}_{delay}"
                child = subprocess.Popen([LK] + _sub(argv, "o"), cwd=c.dir, stderr=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL)
                time.sleep(delay)
                child.send_signal(sig)
                try:
                    _, err = child.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()
                    violation(name, "did not stop on the signal", "")
                    continue
                if child.returncode == 0:
                    print(f"note: {name}: finished before the signal")
                elif child.returncode != -sig:
                    violation(name, f"rc={child.returncode} (want death by {sig.name})", err.decode()[:300])
                left = sorted(set(snapshot(c.dir)) - set(base))
                if sig != signal.SIGKILL and child.returncode != 0 and left:
                    violation(name, "files left after the signal", str(left)[:300])
                if sig == signal.SIGKILL or child.returncode == 0:
                    # The rerun sweeps what the killed run left and writes the clean run's bytes.
                    STATS["cases"] += 1
                    p = subprocess.run([LK] + _sub(argv, "o"), cwd=c.dir, capture_output=True, text=True)
                    o = "o.safetensors" if cmd == "convert" else "o"
                    if p.returncode != 0:
                        violation(name, f"the rerun: rc={p.returncode}", p.stderr[:300])
                    elif outputs_of(c, o) != ref:
                        violation(name, "the rerun wrote other files or bytes than a clean run",
                                  f"{sorted(outputs_of(c, o))} vs {sorted(ref)}")
                    made = {o} | {os.path.join(o, k) for k in os.listdir(c.p(o))} if os.path.isdir(c.p(o)) else {o}
                    stray = sorted(set(snapshot(c.dir)) - set(base) - made)
                    if stray:
                        violation(name, "the rerun left stray files", str(stray)[:300])
                _clean_new(c, base)


# ---------------------------------------------------------------- two writers, a reader
@case
def concurrent_writers():
    # The final output must be one whole run's: the first's or the second's (as each writes it
    # alone), never a mix; the loser fails with one line (or ran after the winner).
    for out in ("o.safetensors", "o"):
        for pair in ("merge_merge", "merge_convert", "merge_inspect"):
            c = Case(f"r8_concurrent_{pair}_{'file' if out.endswith('s') else 'folder'}", (QV, "qv"))
            big_model(c, layers=12)
            second = {"merge_merge": big_merge(out),
                      "merge_convert": ["convert", "qv", "--to", "kohya", "--out", out, "--quiet"],
                      "merge_inspect": ["inspect", out]}[pair]
            refs = []
            for argv in (big_merge("ref" + out[1:]), [("ref" + out[1:]) if a == out else a for a in second]):
                if argv[0] == "inspect":
                    continue
                r = subprocess.run([LK] + argv, cwd=c.dir, capture_output=True, text=True)
                if r.returncode:
                    violation(c.name, "a clean run failed", r.stderr[:300])
                refs.append(outputs_of(c, "ref" + out[1:]))
                shutil.rmtree(c.p("ref" + out[1:])) if os.path.isdir(c.p("ref" + out[1:])) else \
                    os.remove(c.p("ref" + out[1:]))
            base = snapshot(c.dir)
            STATS["cases"] += 1
            first = subprocess.Popen([LK] + big_merge(out), cwd=c.dir, stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL)
            time.sleep(0.4)
            p2 = subprocess.run([LK] + second, cwd=c.dir, capture_output=True, text=True, errors="replace")
            _, err1 = first.communicate(timeout=120)
            for who, rc, err in (("first", first.returncode, err1.decode(errors="replace")),
                                 ("second", p2.returncode, p2.stderr)):
                ls = [l for l in err.splitlines() if l.strip() and not l.startswith("warning")]
                if rc not in (0, 2, 3) or (rc and len(ls) != 1) or "panicked" in err:
                    violation(c.name, f"the {who} run: rc={rc}, {len(ls)} lines", err[:300])
            if first.returncode and p2.returncode:
                violation(c.name, "both runs failed", err1.decode()[:200] + " / " + p2.stderr[:200])
            if os.path.exists(c.p(out)) and outputs_of(c, out) not in refs:
                violation(c.name, "the output is not one whole run's", str(sorted(outputs_of(c, out)))[:300])
            hidden = [k for k in set(snapshot(c.dir)) - set(base) if os.path.basename(k).startswith(".")]
            if hidden:
                violation(c.name, "temporary or lock files left", str(hidden)[:300])


# ---------------------------------------------------------------- inputs truncated while mapped
@case
def truncated_while_mapped():
    for delay in (0.2, 0.6, 1.2):
        for what in ("base", "shard"):
            c = Case(f"r8_truncate_{what}_{delay}")
            big_model(c, layers=12)
            src = "big/model.safetensors"
            if what == "shard":
                t, _ = st_tensors(c.p(src))
                os.remove(c.p(src))
                names = list(t)
                wm = {}
                for i in range(3):
                    f = f"model-0000{i + 1}-of-00003.safetensors"
                    part = {k: t[k] for k in names[4 * i:4 * i + 4]}
                    st_build(c.p("big", f), part)
                    wm.update({k: f for k in part})
                json.dump({"metadata": {}, "weight_map": wm}, open(c.p("big/model.safetensors.index.json"), "w"))
                src = "big/model-00003-of-00003.safetensors"
            argv = big_merge("o") if what == "shard" else [a.replace("big/model.safetensors", src) for a in big_merge("o")]
            if what == "shard":
                argv = [a if a != "big/model.safetensors" else "big" for a in argv]
            STATS["cases"] += 1
            before = snapshot(c.dir)
            child = subprocess.Popen([LK] + argv, cwd=c.dir, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
            time.sleep(delay)
            size = os.path.getsize(c.p(src))
            os.truncate(c.p(src), size // 3)
            _, err = child.communicate(timeout=120)
            err = err.decode(errors="replace")
            lines = [l for l in err.splitlines() if l.strip() and not l.startswith("warning")]
            new = sorted(set(snapshot(c.dir)) - set(before))
            if child.returncode == 0:
                print(f"note: {c.name}: finished before the truncation")
            elif child.returncode != 2 or len(lines) != 1 or os.path.basename(src) not in lines[0]:
                violation(c.name, f"rc={child.returncode}, {len(lines)} lines (want 2, one naming {src})", err[:300])
            elif new:
                violation(c.name, "files left after the error", str(new)[:300])
    # A GGUF file truncated to its first 64 bytes while inspect reads it (a small file: inspect
    # often finishes first, which is fine; the case checks the exit and that nothing is left).
    for delay in (0.05, 0.2):
        c = Case(f"r8_truncate_gguf_{delay}", ("gguf/llama_f32.gguf", "b.gguf"))
        big = c.p("b.gguf")
        STATS["cases"] += 1
        before = snapshot(c.dir)
        child = subprocess.Popen([LK, "inspect", "b.gguf"], cwd=c.dir, stderr=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL)
        time.sleep(delay)
        os.truncate(big, 64)
        _, err = child.communicate(timeout=60)
        lines = _lines(subprocess.CompletedProcess([], child.returncode, "", err.decode(errors="replace")))
        if child.returncode not in (0, 2) or (child.returncode == 2 and (len(lines) != 1 or "b.gguf" not in lines[0])):
            violation(c.name, f"rc={child.returncode}", err.decode(errors="replace")[:300])
        if sorted(set(snapshot(c.dir)) - set(before)):
            violation(c.name, "files left", "")


# ---------------------------------------------------------------- sharded indexes
@case
def index_more():
    idx = "base/model.safetensors.index.json"
    cmds = (MERGE, ["inspect", "base"], ["diff", "base", "base"])

    def sc(name):
        return Case("r8_index_" + name, (SH, "base"), (QV, "qv"))

    def edit(c, fn):
        j = json.load(open(c.p(idx)))
        fn(c, j)
        json.dump(j, open(c.p(idx), "w"))

    def either(c, argv, mention):
        limited(c, argv, {}, mention=mention, rc=(1, 2) if argv[0] == "diff" else (2,))

    # One shard under two spellings: the same file, valid for transformers (os.path.join).
    c = sc("dot_slash")
    edit(c, lambda c, j: j["weight_map"].update({WQ: "./" + SHARD2}))
    for argv in cmds:
        either(c, argv, [("model.safetensors.index.json", SHARD2)])
    # A shard by its absolute path, inside the folder: refused or read (never written through).
    c = sc("absolute_inside")
    edit(c, lambda c, j: j["weight_map"].update({WQ: c.p("base", SHARD2)}))
    for argv in cmds:
        either(c, argv, [("model.safetensors.index.json", SHARD2)])
    # A tensor that no shard holds (every shard exists): refused naming the tensor or the index.
    c = sc("tensor_in_no_shard")
    edit(c, lambda c, j: j["weight_map"].update({"model.layers.9.self_attn.q_proj.weight": SHARD2}))
    for argv in cmds:
        limited(c, argv, {}, mention=[("model.layers.9.self_attn.q_proj.weight", "model.safetensors.index.json")],
                rc=(2,), allow_ok=False)
    # A shard holding a tensor the index does not list: transformers loads what weight_map lists.
    c = sc("unlisted_tensor")
    edit(c, lambda c, j: j["weight_map"].pop(WQ))
    for argv in cmds:
        either(c, argv, [("model.safetensors.index.json", SHARD2, WQ)])
    # Every tensor mapped to one shard (the others unlisted): refused naming a tensor.
    c = sc("all_in_one_shard")
    edit(c, lambda c, j: j.update(weight_map={k: SHARD2 for k in j["weight_map"]}))
    for argv in cmds:
        limited(c, argv, {}, mention=[("model.safetensors.index.json", SHARD2)], rc=(2,), allow_ok=False)
    # A shard that is a symlink to a shard of another folder's index (the HF cache does this).
    c = sc("symlink_other_base")
    shutil.copytree(os.path.join(FX, SH), c.p("other"))
    os.remove(c.p("base", SHARD2))
    os.symlink(os.path.join("..", "other", SHARD2), c.p("base", SHARD2))
    for argv in cmds:
        either(c, argv, [SHARD2])


# ---------------------------------------------------------------- PEFT config vs tensors
CFG8 = {
    # "either": PEFT loads the folder (its targets decide which tensors it uses, unexpected keys
    # are a warning): lorakit may refuse naming adapter_config.json or merge the tensors.
    "target_regex_lm_head_only": (lambda j: j.update(target_modules=r".*lm_head"), "either"),
    "target_list_other_module": (lambda j: j.update(target_modules=["k_proj"]), "either"),
    "layers_to_transform_other": (lambda j: j.update(layers_to_transform=[5]), "either"),
    "exclude_modules_all": (lambda j: j.update(exclude_modules=["q_proj", "v_proj"]), "either"),
    "modules_to_save_missing": (lambda j: j.update(modules_to_save=["no_such_module"]), "either"),
    # PEFT: alpha / r, a TypeError for a list or an object; True is 1.
    "alpha_pattern_bool": (lambda j: j.update(alpha_pattern={"q_proj": True}), "either"),
    "alpha_pattern_list": (lambda j: j.update(alpha_pattern={"q_proj": [16]}), "refuse"),
    "alpha_pattern_object": (lambda j: j.update(alpha_pattern={"q_proj": {"a": 1}}), "refuse"),
    "alpha_pattern_nan_string": (lambda j: j.update(alpha_pattern={"v_proj": "NaN"}), "refuse"),
    # rank_pattern for v_proj only whose value the v tensors contradict (rank 8 stored).
    "rank_pattern_v_only": (lambda j: j.update(rank_pattern={"v_proj": 4}), "refuse"),
    "rank_pattern_full_name": (lambda j: j.update(rank_pattern={"model.layers.0.self_attn.v_proj": 16}), "refuse"),
}


@case
def config_more():
    for what, (fn, verdict) in CFG8.items():
        c = Case("r8_cfg_" + what, (BASE, "base"), (QV, "qv"))
        p = c.p("qv/adapter_config.json")
        j = json.load(open(p))
        fn(j)
        json.dump(j, open(p, "w"))
        for argv in (MERGE, ["resize", "qv", "--rank", "2", "--out", "o"],
                     ["convert", "qv", "--to", "kohya", "--out", "o.safetensors"]):
            limited(c, argv, {}, mention=[("adapter_config.json", "adapter_model.safetensors")], rc=(2,),
                    allow_ok=verdict == "either")
