"""Round-5 cases of fuzz/hostile_round.py, first half: the GGUF code added since round 3 that no
round tried. Phi-3 GGUF bases and adapters (fused attn_qkv / ffn_up, llama.cpp's converters),
split GGUF sets, K-quant row lengths, --outtype, GGUF --part/finalize (the second half,
hostile_cases_round5b.py: Flux/Wan layouts, quantized bases). `check`, `inspect` and `diff` run
over the same lies (they must not panic; check may report). Same harness and verdicts as the
other case files (hostile_lib.py); GGUF files are edited with hostile_gguf.py."""
import json, math, os, shutil, struct, subprocess

from hostile_gguf import F32, STR, TYPE, U16, U32, I32, Gguf
from hostile_lib import (LK, STATS, Case, case, f32, run, run_either, setup_only, snapshot, st_edit, st_tensors,
                         violation)

LC = "gguf/llamacpp/"
PB, PQ, PA = LC + "hf_phi3_base.f32.gguf", LC + "hf_phi3_base.q8_0.gguf", LC + "phi3_lora.gguf"
PEFT = "gguf/hf_phi3/lora"
NAN, INF = float("nan"), float("inf")


def f32z(n, v=0.01):
    return f32([v] * n)


def st_set(name, dt, shape, raw):
    return lambda t: t.__setitem__(name, (dt, shape, raw))


def gcase(name, base=PB, adapter=PA):
    """A case folder with b.gguf (a Phi-3 base), a.gguf (its llama.cpp adapter) and pa (the PEFT
    folder that adapter was converted from)."""
    return Case("r5_" + name, (base, "b.gguf"), (adapter, "a.gguf"), (PEFT, "pa"))


def gedit(c, rel, fn, relayout=True, count=None):
    g = Gguf(c.p(rel))
    fn(g)
    g.save(c.p(rel), relayout=relayout, count=count)


MERGE_G = ["merge", "--base", "b.gguf", "--adapter", "a.gguf", "--out", "o.gguf"]
MERGE_P = ["merge", "--base", "b.gguf", "--adapter", "pa", "--out", "o.gguf"]
CONVERT = ["convert", "pa", "--to", "gguf", "--base", "b.gguf", "--out", "o.gguf"]


def either(c, argv, refusals=(2,)):
    """run_either, then the outputs of a run that succeeded are removed (the next command of the
    case starts from the same folder)."""
    before = set(snapshot(c.dir))
    p = run_either(c, argv, refusals=refusals)
    if p.returncode == 0:
        for rel in sorted(set(snapshot(c.dir)) - before, reverse=True):
            q = c.p(rel)
            shutil.rmtree(q) if os.path.isdir(q) and not os.path.islink(q) else os.remove(q)
    return p


def all_cmds(c, mention, merges=(MERGE_G, MERGE_P), inspect=("b.gguf",), lenient=False):
    """The merges must refuse (naming `mention`), or with `lenient` refuse or succeed; inspect
    and diff of the lying file must not panic: a clean refusal naming the file, or a report."""
    for argv in merges:
        either(c, argv) if lenient else run(c, argv, mention=mention)
    for f in inspect:
        either(c, ["inspect", f])
        either(c, ["diff", f, f], refusals=(1, 2))


# ---------------------------------------------------------------- Phi-3 GGUF bases
@case
def phi3_base_lies():
    # A lying general.architecture: the names of another family, or none.
    for arch in ("llama", "phi2", "qwen2", "", "phi3\0"):
        c = gcase(f"arch_{arch.strip(chr(0)) or 'empty'}{'_nul' if chr(0) in arch else ''}")
        gedit(c, "b.gguf", lambda g, a=arch: g.set("general.architecture", STR, a))
        all_cmds(c, [("b.gguf", "a.gguf", "pa")], merges=(MERGE_G, MERGE_P, CONVERT))
    c = gcase("arch_missing")
    gedit(c, "b.gguf", lambda g: g.drop("general.architecture"))
    all_cmds(c, ["b.gguf"], merges=(MERGE_G, MERGE_P, CONVERT))
    c = gcase("arch_u32")
    gedit(c, "b.gguf", lambda g: g.set("general.architecture", U32, 3))
    all_cmds(c, ["b.gguf", "general.architecture"], merges=(MERGE_G, MERGE_P, CONVERT))
    # Fused attn_qkv of the wrong row count (q 64 + k 32 + v 32 = 128 rows), F32 and Q8_0.
    for base, tag in ((PB, "f32"), (PQ, "q8_0")):
        for rows in (96, 129, 160, 0):
            c = gcase(f"qkv_rows_{rows}_{tag}", base=base)
            gedit(c, "b.gguf", lambda g, r=rows: g.reshape("blk.0.attn_qkv.weight", [64, r]))
            all_cmds(c, [("b.gguf", "a.gguf", "pa"), "attn_qkv"], merges=(MERGE_G, MERGE_P, CONVERT))
        c = gcase(f"qkv_in_width_{tag}", base=base)
        gedit(c, "b.gguf", lambda g: g.reshape("blk.0.attn_qkv.weight", [32, 256]))
        all_cmds(c, [("b.gguf", "a.gguf", "pa"), "attn_qkv"], merges=(MERGE_G, MERGE_P, CONVERT))
        # ffn_up holds gate and up (2 × 64 rows): a width that does not split, a wrong in-width.
        for dims in ([64, 96], [64, 127], [32, 128], [64, 256]):
            c = gcase(f"ffn_up_{dims[0]}x{dims[1]}_{tag}", base=base)
            gedit(c, "b.gguf", lambda g, d=dims: g.reshape("blk.1.ffn_up.weight", d))
            all_cmds(c, [("b.gguf", "a.gguf", "pa"), "ffn_up"], merges=(MERGE_G, MERGE_P, CONVERT))
    # Head counts that contradict the fused tensor (qkv rows = (heads + 2·kv_heads)·head_dim).
    for key, val in (("phi3.attention.head_count_kv", 4), ("phi3.attention.head_count_kv", 0),
                     ("phi3.attention.head_count_kv", 3), ("phi3.attention.head_count", 0),
                     ("phi3.attention.head_count", 5), ("phi3.embedding_length", 48),
                     ("phi3.feed_forward_length", 48), ("phi3.feed_forward_length", 0)):
        c = gcase(f"{key.split('.', 1)[1].replace('.', '_')}_{val}")
        gedit(c, "b.gguf", lambda g, k=key, v=val: g.set(k, U32, v))
        # A lying count the merge does not read is no lie it must see: refused naming the file,
        # or merged (the stored shapes decide the split).
        all_cmds(c, [], lenient=True, merges=(MERGE_G, MERGE_P, CONVERT))
    # Tensor offsets that overlap, lie past the end, are not aligned, or go backwards.
    def off_lie(what):
        def fn(g):
            ts = g.tensors
            if what == "overlap":
                ts[4]["offset"] = ts[3]["offset"] + 64
            elif what == "same":
                ts[7]["offset"] = ts[6]["offset"]
            elif what == "past_end":
                ts[-2]["offset"] = len(g.data) - 16
            elif what == "far_past_end":
                ts[3]["offset"] = 1 << 62
            elif what == "unaligned":
                ts[4]["offset"] += 4
            elif what == "wrap":
                ts[4]["offset"] = (1 << 64) - 32
        return fn
    for base, tag in ((PB, "f32"), (PQ, "q8_0")):
        for what in ("overlap", "same", "past_end", "far_past_end", "unaligned", "wrap"):
            c = gcase(f"offset_{what}_{tag}", base=base)
            gedit(c, "b.gguf", off_lie(what), relayout=False)
            all_cmds(c, ["b.gguf"], merges=(MERGE_G, MERGE_P))
    # Dims that overflow, a zero dim, five dims, an unknown type, a count that lies.
    for what, fn in {
        "dims_overflow": lambda g: g.t("blk.0.ffn_down.weight").update(dims=[1 << 33, 1 << 33]),
        "dims_zero": lambda g: g.t("blk.0.ffn_down.weight").update(dims=[64, 0]),
        "dims_five": lambda g: g.t("blk.0.ffn_down.weight").update(dims=[64, 64, 1, 1, 1]),
        "type_unknown": lambda g: g.t("blk.0.ffn_down.weight").update(type=99),
        "type_q4_k_on_f32_bytes": lambda g: g.t("blk.0.ffn_down.weight").update(type=TYPE["Q4_K"]),
    }.items():
        c = gcase(what)
        gedit(c, "b.gguf", fn, relayout=False)
        all_cmds(c, ["b.gguf"], merges=(MERGE_G, MERGE_P))
    c = gcase("count_more")
    gedit(c, "b.gguf", lambda g: None, relayout=False, count=16)
    all_cmds(c, ["b.gguf"], merges=(MERGE_G, MERGE_P))
    # A count one short is a valid file of 14 tensors whose data section starts earlier (the
    # 15th info is read as padding, which llama.cpp's gguf.cpp does not check either): a merge of
    # other bytes, or a refusal.
    c = gcase("count_fewer")
    gedit(c, "b.gguf", lambda g: None, relayout=False, count=14)
    all_cmds(c, [], merges=(MERGE_G, MERGE_P), lenient=True)


# ---------------------------------------------------------------- GGUF headers that lie
@case
def gguf_header_lies():
    """general.alignment, the version, the key count and lengths (gguf.cpp refuses an alignment
    that is 0 or not a power of two, versions other than 2 and 3, and reads past no end)."""
    lies = {
        "align_0": dict(fn=lambda g: g.set("general.alignment", U32, 0), align=32),
        "align_3": dict(fn=lambda g: g.set("general.alignment", U32, 3), align=32),
        "align_huge": dict(fn=lambda g: g.set("general.alignment", U32, 1 << 31), align=32),
        # (64 or 256 would be no lie: every tensor of these bases is a multiple of 256 bytes.)
        "align_1024_data_32": dict(fn=lambda g: g.set("general.alignment", U32, 1024), align=32, relayout=False),
        "align_string": dict(fn=lambda g: g.set("general.alignment", STR, "32"), align=32),
        "version_1": dict(version=1), "version_4": dict(version=4), "version_0": dict(version=0),
        "kv_count_more": dict(kv_count=28), "kv_count_huge": dict(kv_count=1 << 60),
        "count_huge": dict(count=1 << 60),
    }
    for what, lie in lies.items():
        c = gcase("hdr_" + what)
        g = Gguf(c.p("b.gguf"))
        if "fn" in lie:
            lie["fn"](g)
        g.save(c.p("b.gguf"), relayout=lie.get("relayout", True), align=lie.get("align"), version=lie.get("version"),
               kv_count=lie.get("kv_count"), count=lie.get("count"))
        all_cmds(c, ["b.gguf"], merges=(MERGE_G, MERGE_P))
    # A 64-byte alignment, written as such: a valid file (llama.cpp reads it): a merge.
    c = gcase("hdr_align_64_valid")
    gedit(c, "b.gguf", lambda g: g.set("general.alignment", U32, 64))
    all_cmds(c, [], merges=(MERGE_G, MERGE_P), lenient=True)
    # Raw byte lies: a key length past the end, a string value's length past the end.
    src = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", PB), "rb").read()
    for what, old, new in (
        ("key_len_huge", struct.pack("<Q", len(b"general.architecture")) + b"general.architecture",
         struct.pack("<Q", 1 << 50) + b"general.architecture"),
        ("value_len_huge", struct.pack("<Q", 4) + b"phi3", struct.pack("<Q", 1 << 40) + b"phi3"),
        ("tensor_name_len_huge", struct.pack("<Q", len(b"blk.0.ffn_down.weight")) + b"blk.0.ffn_down.weight",
         struct.pack("<Q", (1 << 63) + 21) + b"blk.0.ffn_down.weight"),
    ):
        c = gcase("hdr_" + what)
        if src.count(old) != 1:
            print(f"note: {c.name}: pattern occurs {src.count(old)} times; case skipped")
            STATS["skipped"] += 1
            continue
        open(c.p("b.gguf"), "wb").write(src.replace(old, new))
        all_cmds(c, ["b.gguf"], merges=(MERGE_G, MERGE_P))


# ---------------------------------------------------------------- K-quant and block row lengths
@case
def gguf_block_rows():
    # A K-quant tensor whose rows are not whole 256-value super-blocks (64 values per row).
    for ty in ("Q4_K", "Q6_K", "Q2_K"):
        c = gcase(f"kquant_row64_{ty}")
        gedit(c, "b.gguf", lambda g, ty=ty: g.reshape("blk.0.ffn_down.weight", [64, 64], ty=TYPE[ty]))
        all_cmds(c, ["b.gguf", "blk.0.ffn_down.weight"], merges=(MERGE_G, MERGE_P))
    # kquant.gguf's tensors reshaped to rows of 128 (the same bytes: 73 super-blocks).
    for ty in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k"):
        c = Case(f"r5_kquant_fixture_row128_{ty}", ("gguf/kquant.gguf", "k.gguf"))
        gedit(c, "k.gguf", lambda g, ty=ty: g.t("q." + ty).update(dims=[128, 146]), relayout=False)
        either(c, ["inspect", "k.gguf"])
        run(c, ["diff", "k.gguf", "k.gguf"], mention=["k.gguf", "q." + ty])
    # A Q8_0 tensor whose rows are not whole 32-value blocks.
    c = gcase("q8_0_row48", base=PQ)
    gedit(c, "b.gguf", lambda g: g.reshape("blk.0.ffn_down.weight", [48, 64]))
    all_cmds(c, ["b.gguf", "blk.0.ffn_down.weight"], merges=(MERGE_G, MERGE_P))
    # --outtype on the wrong base: a safetensors base, an adapter as base, unknown types,
    # a type the fused rows do not fill (fallback, reported), a GGUF adapter's --outtype.
    for what, argv, rc in (
        ("st_base", ["merge", "--base", "st", "--adapter", "qv", "--out", "o.safetensors", "--outtype", "q4_k"], "refuse"),
        ("st_base_gguf_out_unknown", ["merge", "--base", "st", "--adapter", "qv", "--out", "o.gguf", "--outtype", "q7_k"], "refuse"),
        ("unknown", MERGE_P + ["--outtype", "q4_2"], "refuse"),
        ("iq2", MERGE_P + ["--outtype", "iq2_xxs"], "refuse"),
        ("empty", MERGE_P + ["--outtype", ""], "refuse"),
        ("q4_k_fallback", MERGE_P + ["--outtype", "q4_k"], "either"),
        ("q2_k_q8_base", ["merge", "--base", "bq.gguf", "--adapter", "pa", "--out", "o.gguf", "--outtype", "q2_k"], "either"),
        ("with_dtype", MERGE_P + ["--outtype", "f16", "--dtype", "bf16"], "either"),
        ("convert", CONVERT + ["--outtype", "q8_0"], "refuse"),
        ("unmerge_q4_0", MERGE_P + ["--outtype", "q4_0", "--unmerge"], "either"),
    ):
        c = gcase(f"outtype_{what}")
        c.copy("llama/base", "st")
        c.copy("llama/adapters/qv_r8", "qv")
        c.copy(PQ, "bq.gguf")
        if rc == "refuse":
            run(c, argv, mention=[("outtype", "--outtype", "q4_k", "q7_k", "q4_2", "iq2_xxs", "dtype", "o.safetensors")])
        else:
            either(c, argv)


# ---------------------------------------------------------------- Phi-3 GGUF adapters
@case
def phi3_adapter_lies():
    A0, B0 = "blk.0.attn_qkv.weight.lora_a", "blk.0.attn_qkv.weight.lora_b"
    for what, fn, mention in (
        ("rank_disagree", lambda g: g.reshape(B0, [3, 128]), [A0.rsplit(".", 1)[0]]),
        ("rank_disagree_a", lambda g: g.reshape(A0, [64, 5]), [A0.rsplit(".", 1)[0]]),
        ("lora_b_rows", lambda g: g.reshape(B0, [4, 96]), ["attn_qkv"]),
        ("lora_a_in", lambda g: g.reshape(A0, [32, 4]), ["attn_qkv"]),
        ("ffn_up_rows", lambda g: g.reshape("blk.1.ffn_up.weight.lora_b", [4, 127]), ["ffn_up"]),
        ("lora_b_missing", lambda g: g.tensors.remove(g.t(B0)), ["attn_qkv"]),
        ("lora_a_missing", lambda g: g.tensors.remove(g.t(A0)), ["attn_qkv"]),
        ("lora_3d", lambda g: g.reshape(A0, [64, 4, 1]), ["attn_qkv"]),
        ("unknown_tensor", lambda g: [t.update(name=t["name"].replace("attn_qkv", "attn_qkvx")) for t in g.tensors[6:8]],
         ["attn_qkvx"]),
        ("module_on_norm", lambda g: [t.update(name=t["name"].replace("ffn_down", "attn_norm")) for t in g.tensors[0:2]],
         ["attn_norm"]),
        ("alpha_nan", lambda g: g.set("adapter.lora.alpha", F32, NAN), ["adapter.lora.alpha"]),
        ("alpha_inf", lambda g: g.set("adapter.lora.alpha", F32, INF), ["adapter.lora.alpha"]),
        ("alpha_string", lambda g: g.set("adapter.lora.alpha", STR, "8"), ["adapter.lora.alpha"]),
        ("type_prompt", lambda g: g.set("adapter.type", STR, "prompt"), ["adapter.type"]),
        ("general_type_model", lambda g: g.set("general.type", STR, "model"), ["a.gguf"]),
        ("arch_llama", lambda g: g.set("general.architecture", STR, "llama"), ["a.gguf"]),
        ("arch_qwen2", lambda g: g.set("general.architecture", STR, "qwen2"), ["a.gguf"]),
        ("offset_past_end", lambda g: g.t(B0).update(offset=len(g.data) - 8), ["a.gguf"]),
        ("offset_overlap", lambda g: g.t(B0).update(offset=g.t(A0)["offset"] + 32), ["a.gguf"]),
        ("type_unknown", lambda g: g.t(B0).update(type=77), ["a.gguf"]),
        ("dims_overflow", lambda g: g.t(A0).update(dims=[1 << 40, 1 << 30]), ["a.gguf"]),
        ("lora_a_q4_k_row64", lambda g: g.reshape(A0, [64, 4], ty=TYPE["Q4_K"]), ["a.gguf", "attn_qkv"]),
        ("lora_b_q8_0_row4", lambda g: g.reshape(B0, [4, 128], ty=TYPE["Q8_0"]), ["a.gguf", "attn_qkv"]),
    ):
        c = gcase("ad_" + what)
        gedit(c, "a.gguf", fn, relayout=what not in ("offset_past_end", "offset_overlap", "type_unknown",
                                                     "dims_overflow"))
        run(c, MERGE_G, mention=["a.gguf"] + mention)
        either(c, ["inspect", "a.gguf"])
        either(c, ["diff", "a.gguf", "a.gguf"], refusals=(1, 2))
        run(c, ["check", "a.gguf"], mention=["a.gguf"])
    # A Q8_0 lora_a (convert_lora_to_gguf.py --outtype q8_0 writes them): a merge.
    c = gcase("ad_lora_q8_0_a")
    gedit(c, "a.gguf", lambda g: g.reshape(A0, [64, 4], ty=TYPE["Q8_0"]))
    either(c, MERGE_G)
    # A negative or zero alpha, or none: llama.cpp reads the metadata as given (llama-adapter.cpp
    # at b6000: `scale = alpha ? adapter_scale * alpha / rank : adapter_scale`): a merge or a
    # clean refusal naming the key.
    for what, fn in (("alpha_negative", lambda g: g.set("adapter.lora.alpha", F32, -8.0)),
                     ("alpha_zero", lambda g: g.set("adapter.lora.alpha", F32, 0.0)),
                     ("alpha_missing", lambda g: g.drop("adapter.lora.alpha")),
                     ("alpha_huge", lambda g: g.set("adapter.lora.alpha", F32, 3e38))):
        c = gcase("ad_" + what)
        gedit(c, "a.gguf", fn)
        p = either(c, MERGE_G)
        if p.returncode == 2 and "adapter.lora.alpha" not in p.stderr and what != "alpha_huge":
            violation(c.name, "refusal does not name adapter.lora.alpha", p.stderr.strip()[:300])
    # The PEFT folder behind it, lying about alpha and ranks (convert to GGUF and merge).
    for what, fn in (("alpha_nan", lambda j: j.update(lora_alpha=NAN)),
                     ("alpha_string", lambda j: j.update(lora_alpha="8")),
                     ("rank_pattern_nan", lambda j: j.update(alpha_pattern={"qkv_proj": NAN}))):
        c = gcase("peft_" + what)
        p = c.p("pa/adapter_config.json")
        j = json.load(open(p))
        fn(j)
        open(p, "w").write(json.dumps(j).replace("NaN", "NaN"))
        run(c, CONVERT, mention=["adapter_config.json"])
        run(c, MERGE_P, mention=["adapter_config.json"])
        either(c, ["check", "pa", "--target", "llama.cpp"], refusals=(1, 2))
    # The PEFT folder's fused modules of the wrong shape, against the GGUF base and for check.
    for what, name, shape in (("qkv_b_rows_96", "qkv_proj.lora_B", [96, 4]), ("gate_up_b_rows_127", "gate_up_proj.lora_B", [127, 4]),
                              ("qkv_a_in_32", "qkv_proj.lora_A", [4, 32])):
        c = gcase("peft_" + what)
        f = c.p("pa/adapter_model.safetensors")
        t, _ = st_tensors(f)
        k = next(k for k in t if "layers.0." in k and name in k)
        st_edit(f, st_set(k, "F32", shape, f32z(math.prod(shape))))
        # The two files disagree on a shape: naming either (with the module or tensor) is fair.
        run(c, CONVERT, mention=[("pa", "b.gguf"), ("qkv_proj", "gate_up_proj", "attn_qkv", "ffn_up")])
        run(c, MERGE_P, mention=[("pa", "b.gguf"), ("qkv_proj", "gate_up_proj", "attn_qkv", "ffn_up")])
        either(c, ["check", "pa", "--target", "llama.cpp"], refusals=(1, 2))
        either(c, ["inspect", "pa"])


# ---------------------------------------------------------------- split GGUF sets
@case
def gguf_split_sets():
    def sc(name):
        """A Phi-3 base split by lorakit into three files of <= 100 KB (m-0000N-of-00003.gguf)."""
        c = gcase(name)
        setup_only(c, ["merge", "--base", "b.gguf", "--adapter", "pa", "--out", "m.gguf", "--max-shard-size", "100KB",
                       "--quiet"])
        os.remove(c.p("b.gguf"))
        return c
    s = [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    merge = ["merge", "--base", s[0], "--adapter", "pa", "--out", "o.gguf"]
    c = sc("split_probe")
    have = sorted(n for n in os.listdir(c.dir) if n.startswith("m-"))
    if have != s:
        violation(c.name, "harness: the split set is not three files", str(have))
        return
    shutil.rmtree(c.dir)
    # A missing last shard; a shard duplicated over another; the set opened from a later shard.
    c = sc("split_missing_last")
    os.remove(c.p(s[2]))
    for argv in (merge, ["inspect", s[0]], ["diff", s[0], s[0]]):
        run(c, argv, mention=[s[2]])
    for dup, over in ((1, 2), (0, 1), (2, 1)):
        c = sc(f"split_dup_{dup + 1}_over_{over + 1}")
        shutil.copy(c.p(s[dup]), c.p(s[over]))
        for argv in (merge, ["inspect", s[0]], ["diff", s[0], s[0]]):
            run(c, argv, mention=[(s[over], s[dup])])
    c = sc("split_open_second")
    either(c, ["merge", "--base", s[1], "--adapter", "pa", "--out", "o.gguf"])
    either(c, ["inspect", s[1]])
    # split.count / split.no / split.tensors.count lying in one shard.
    for what, shard, key, ty, val in (
        ("count_2_first", 0, "split.count", U16, 2), ("count_4_first", 0, "split.count", U16, 4),
        ("count_2_last", 2, "split.count", U16, 2), ("count_0_first", 0, "split.count", U16, 0),
        ("no_lies", 1, "split.no", U16, 2), ("no_out_of_range", 2, "split.no", U16, 7),
        ("tensors_count_more", 0, "split.tensors.count", I32, 99), ("tensors_count_fewer", 0, "split.tensors.count", I32, 3),
        ("tensors_count_negative", 0, "split.tensors.count", I32, -1), ("count_type_str", 0, "split.count", STR, "3"),
    ):
        c = sc(f"split_{what}")
        if Gguf(c.p(s[shard])).get(key) is None:
            print(f"note: {c.name}: {key} not in {s[shard]}; case skipped")
            STATS["skipped"] += 1
            continue
        gedit(c, s[shard], lambda g, k=key, t=ty, v=val: g.set(k, t, v))
        for argv in (merge, ["inspect", s[0]], ["diff", s[0], s[0]]):
            run(c, argv, mention=[tuple(s)])
    # A shard holding a tensor another shard holds too; a shard with a tensor that lies about offsets.
    c = sc("split_tensor_twice")
    g0 = Gguf(c.p(s[0]))
    first = g0.tensors[-1]["name"]
    gedit(c, s[1], lambda g: g.tensors[0].update(name=first) if len(g.tensors[0]["name"]) == len(first) else
          g.tensors.__setitem__(0, dict(g.tensors[0], name=first)))
    for argv in (merge, ["inspect", s[0]], ["diff", s[0], s[0]]):
        run(c, argv, mention=[(s[0], s[1]), first])
    c = sc("split_offset_past_end")
    gedit(c, s[1], lambda g: g.tensors[-1].update(offset=len(g.data)), relayout=False)
    for argv in (merge, ["inspect", s[0]], ["diff", s[0], s[0]]):
        run(c, argv, mention=[s[1]])


# ---------------------------------------------------------------- GGUF --part I/N + finalize
def finalize_either(c):
    """`finalize o.gguf` refused cleanly (nothing changed), or done: the output byte-identical,
    the manifests (and nothing else) removed."""
    before = snapshot(c.dir)
    STATS["cases"] += 1
    p = subprocess.run([LK, "finalize", "o.gguf"], cwd=c.dir, capture_output=True, text=True, errors="replace")
    after = snapshot(c.dir)
    if p.returncode == 0:
        gone = sorted(set(before) - set(after))
        if after.get("o.gguf") != before.get("o.gguf") or any(".lorakit-part-" not in g for g in gone) \
                or set(after) - set(before):
            violation(c.name, "finalize changed more than its manifests", str(gone)[:300])
    elif p.returncode != 2 or len(p.stderr.strip().splitlines()) != 1 or after != before:
        violation(c.name, f"rc={p.returncode}", p.stderr[:300])


@case
def gguf_parts():
    def parted(name, n=2, only=None, extra=()):
        c = gcase(name)
        for i in range(1, n + 1):
            if only is None or i in only:
                setup_only(c, MERGE_P + ["--part", f"{i}/{n}", "--quiet"] + list(extra))
        return c

    def edit(c, fn, which=None):
        for n in sorted(os.listdir(c.dir)):
            if ".lorakit-part-" in n and (which is None or f"part-{which}-of" in n):
                p = c.p(n)
                v = json.load(open(p))
                r = fn(v)
                json.dump(v if r is None else r, open(p, "w"))

    def files(v):
        return v["plan"]["files"]
    c = parted("gparts_missing_second", only=[1])
    run(c, ["finalize", "o.gguf"], mention=["o.gguf"])
    edits = {
        "tensor_shape": lambda v: files(v)[0][1][7].__setitem__(2, [64, 96]),
        "tensor_type": lambda v: files(v)[0][1][7].__setitem__(1, "Q8_0"),
        "tensor_renamed": lambda v: files(v)[0][1][7].__setitem__(0, "blk.0.attn_qkvx.weight"),
        "tensor_dropped": lambda v: files(v)[0][1].pop(7),
        "tensor_twice": lambda v: files(v)[0][1].append(files(v)[0][1][7]),
        "file_renamed": lambda v: files(v)[0].__setitem__(0, "p.gguf"),
        "file_absolute": lambda v: files(v)[0].__setitem__(0, "/tmp/lorakit-hostile-x.gguf"),
        "file_dotdot": lambda v: files(v)[0].__setitem__(0, "../x.gguf"),
        "out_other": lambda v: v["plan"].__setitem__("out", "p.gguf"),
        "written_size": lambda v: v["written"][0].__setitem__(1, v["written"][0][1] - 32),
        "written_other": lambda v: v["written"][0].__setitem__(0, "b.gguf"),
        "parts_3": lambda v: v.__setitem__("parts", 3),
        "part_swapped": lambda v: v.__setitem__("part", 3 - v["part"]),
        "digest": lambda v: v["plan"].__setitem__("digest", "0" * 64),
        "input_size": lambda v: v["plan"]["inputs"][0].__setitem__("bytes", 1),
        "version_2": lambda v: v.__setitem__("version", 2),
        "plan_null": lambda v: v.__setitem__("plan", None),
        "files_empty": lambda v: v["plan"].__setitem__("files", []),
    }
    # Lies the parts' manifests agree on that change nothing finalize checks against the files
    # (the digest is compared between manifests, the metadata it hashes is not kept; `out` is the
    # manifest's own name for the output): a finalize of the parts' correct output, or a refusal.
    consistent = ("out_other", "digest")
    for what, fn in edits.items():
        for which in (1, None):
            if which is None and what.startswith("written"):
                continue  # part 2 wrote no file of a one-file output
            c = parted(f"gparts_{what}_{'first' if which else 'both'}")
            try:
                edit(c, fn, which)
            except (KeyError, IndexError, TypeError) as e:
                print(f"note: {what}: manifest layout differs ({e!r}); case skipped")
                STATS["skipped"] += 1
                continue
            if which is None and what in consistent:
                finalize_either(c)
            else:
                run(c, ["finalize", "o.gguf"], mention=[(".lorakit-part-", "o.gguf")])
    # The merged file changed between a part and finalize: truncated, grown, or a tensor's bytes.
    for what in ("truncated", "grown", "header_lies"):
        c = parted(f"gparts_out_{what}")
        b = open(c.p("o.gguf"), "rb").read()
        if what == "truncated":
            b = b[:-64]
        elif what == "grown":
            b = b + b"\0" * 64
        else:
            b = b.replace(b"blk.0.attn_qkv.weight", b"blk.0.attn_qkx.weight")
        open(c.p("o.gguf"), "wb").write(b)
        run(c, ["finalize", "o.gguf"], mention=[("o.gguf", ".lorakit-part-")])
    # A base changed between the parts, parts of different N: parts run apart (another machine
    # may run one), so the second part writes its share; finalize must refuse the set.
    for what, fn, second in (
        ("base_changed", lambda c: gedit(c, "b.gguf", lambda g: g.set("general.name", STR, "other")), "2/2"),
        ("base_changed_after", None, "2/2"),
        ("mixed_n", lambda c: None, "2/3"),
        ("outtype_differs", lambda c: None, "2/2 --outtype q8_0"),
    ):
        c = parted(f"gparts_{what}", only=[1])
        if fn:
            fn(c)
        setup_only(c, MERGE_P + ["--part"] + second.split() + ["--quiet"])
        if fn is None:
            gedit(c, "b.gguf", lambda g: g.set("general.name", STR, "other"))
        run(c, ["finalize", "o.gguf"], mention=[(".lorakit-part-", "o.gguf", "b.gguf")])
    c = parted("gparts_split_out_missing_part", only=[1], extra=("--max-shard-size", "100KB"))
    run(c, ["finalize", "o.gguf"], mention=[("o.gguf", ".lorakit-part-")])
    # A split output's parts: a shard removed or truncated after the parts ran.
    for what in ("shard_removed", "shard_truncated"):
        c = parted(f"gparts_split_{what}", extra=("--max-shard-size", "100KB"))
        shards = sorted(n for n in os.listdir(c.dir) if n.startswith("o-") and n.endswith(".gguf"))
        victim = shards[1]
        if what == "shard_removed":
            os.remove(c.p(victim))
        else:
            b = open(c.p(victim), "rb").read()
            open(c.p(victim), "wb").write(b[:-64])
        run(c, ["finalize", "o.gguf"], mention=[victim])


# ---------------------------------------------------------------- recipes with GGUF steps
@case
def gguf_recipes():
    """A recipe's GGUF merge steps (runnable since 8848c17) over a lying base or adapter, and
    outputs onto their inputs: refused naming the file (the recipe's steps write nothing)."""
    step = '[[step]]\nname = "m"\ncommand = "merge"\nbase = "%s"\nadapter = ["%s"]\nout = "%s"\n'
    cases = {
        "base_qkv_rows": ("../b.gguf", "../pa", "o.gguf", lambda c: gedit(c, "b.gguf", lambda g: g.reshape(
            "blk.0.attn_qkv.weight", [64, 96])), [("b.gguf", "pa"), "attn_qkv"]),
        "adapter_alpha_nan": ("../b.gguf", "../a.gguf", "o.gguf", lambda c: gedit(c, "a.gguf", lambda g: g.set(
            "adapter.lora.alpha", F32, NAN)), ["a.gguf", "adapter.lora.alpha"]),
        "out_onto_base": ("../b.gguf", "../pa", "../b.gguf", None, ["b.gguf"]),
        "out_not_gguf": ("../b.gguf", "../pa", "o.safetensors", None, ["o.safetensors"]),
        "split_base_missing": ("../m-00001-of-00003.gguf", "../pa", "o.gguf", "split", ["m-00003-of-00003.gguf"]),
    }
    for what, (base, adapter, out, fn, mention) in cases.items():
        c = gcase("recipe_" + what)
        if fn == "split":
            setup_only(c, ["merge", "--base", "b.gguf", "--adapter", "pa", "--out", "m.gguf", "--max-shard-size",
                           "100KB", "--quiet"])
            os.remove(c.p("m-00003-of-00003.gguf"))
        elif fn:
            fn(c)
        c.write("r/recipe.toml", step % (base, adapter, out))
        # Refused by the recipe's plan, before any step runs (and so before its status line).
        for extra in ([], ["--quiet"], ["--dry-run"]):
            run(c, ["run", "r/recipe.toml"] + extra, mention=mention)



# ---------------------------------------------------------------- GGUF odds and ends
@case
def gguf_misc():
    def embed(a_dims, b_dims, stem="token_embd.weight"):
        def fn(g):
            a, b = g.tensors[4], g.tensors[5]  # blk.0.attn_output's pair, renamed
            a.update(name=stem + ".lora_a")
            b.update(name=stem + ".lora_b")
            g.reshape(a["name"], a_dims)
            g.reshape(b["name"], b_dims)
        return fn
    # Factors on the embedding and the head: the right shapes merge, wrong ones are refused.
    for what, fn, ok in (
        ("embd_ok", embed([4, 128], [4, 64]), True),
        ("embd_vocab_127", embed([4, 127], [4, 64]), False),
        ("embd_rank", embed([3, 128], [4, 64]), False),
        ("embd_width_32", embed([4, 128], [4, 32]), False),
        ("head_ok", embed([64, 4], [4, 128], "output.weight"), True),
        ("head_rows_127", embed([64, 4], [4, 127], "output.weight"), False),
        ("norm_factor", embed([64, 4], [4, 64], "blk.0.attn_norm.weight"), False),
    ):
        c = gcase("misc_" + what)
        gedit(c, "a.gguf", fn)
        if ok:
            either(c, MERGE_G)
        else:
            run(c, MERGE_G, mention=["a.gguf", ("token_embd", "output", "attn_norm")])
    # Weights and unmerge over GGUF adapters; a GGUF base diffed with a safetensors file.
    c = gcase("misc_flags")
    c.copy("llama/base/model.safetensors", "st.safetensors")
    gedit(c, "a.gguf", lambda g: g.set("adapter.lora.alpha", F32, NAN))
    for argv, mention in (
        (MERGE_G + ["--unmerge"], ["a.gguf", "adapter.lora.alpha"]),
        (["merge", "--base", "b.gguf", "--adapter", "pa", "--weight", "nan", "--out", "o.gguf"], ["weight"]),
        (["merge", "--base", "b.gguf", "--adapter", "pa", "--adapter", "a.gguf", "--out", "o.gguf"], ["a.gguf"]),
        (["merge", "--base", "b.gguf", "--adapter", "pa", "--dtype", "bf16", "--out", "o.gguf"], ["--dtype"]),
    ):
        run(c, argv, mention=mention)
    either(c, ["diff", "b.gguf", "st.safetensors"], refusals=(1, 2))
    either(c, ["diff", "b.gguf", "pa"], refusals=(1, 2))
    either(c, ["inspect", "pa", "--base", "b.gguf"])
