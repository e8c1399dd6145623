//! What every integration test shares: the binary (`bin`, `run_ok`, `run_err`), fixture
//! paths, one argv helper per command, JSON and safetensors readers, tolerances measured against
//! f64, the Python-oracle and GPU skip policies. Holds no test itself and no expected value: a
//! helper that decides a verdict belongs beside the test that needs it. Submodules: `argv` (the
//! argument lists), `files` (temporary folders, listings, raw files), `json` (report readers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod argv;
mod files;
mod json;
use argv::argv;
pub use argv::*;
pub use files::*;
pub use json::*;

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lorakit"));
    c.env_remove("RUST_LOG");
    c
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// A path as an argument of the binary (test paths are UTF-8: the fixtures folder and temp dirs).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs lorakit with `args`, asserting success; returns stdout.
pub fn run_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    ok_stdout(bin().args(args))
}

/// Runs `cmd` (a [`bin`] with its environment and arguments set, or another program), asserting
/// success; returns stdout.
#[track_caller]
pub fn ok_stdout(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 stdout")
}

/// Runs lorakit with `args`, asserting success; returns stderr (its warnings and notes).
#[track_caller]
pub fn ok_stderr<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    String::from_utf8(run_exit(args, 0).stderr).expect("utf8 stderr")
}

/// Runs lorakit with `args`, asserting that it exits with status `code`; returns the output.
#[track_caller]
pub fn run_exit<I, S>(args: I, code: i32) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = bin().args(args).output().expect("spawn lorakit");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs lorakit expecting failure; returns the output.
pub fn run_err<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = bin().args(args).output().expect("spawn lorakit");
    assert!(
        !out.status.success(),
        "lorakit unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// `diff A B EXTRA --json`: (exit code, the report).
pub fn diff_json(a: &Path, b: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = diff_args(a, b, extra);
    args.push("--json".into());
    let out = bin().args(args).output().expect("spawn lorakit");
    let v = serde_json::from_slice(&out.stdout).expect("diff --json prints JSON");
    (out.status.code().expect("exit code"), v)
}

/// The stderr of a failed run, checked to be a single `error: …` line without a panic.
pub fn one_line_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    // The cause is said once ("file: cause", not "file: cause: cause").
    let parts: Vec<&str> = lines[0].split(": ").collect();
    for k in 2..parts.len() {
        let tail = parts[k..].join(": ");
        assert!(
            tail.len() < 12 || !parts[..k].join(": ").ends_with(&tail),
            "message repeats itself: {err}"
        );
    }
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit status for bad input: {err}"
    );
    lines[0].to_owned()
}

/// A tensor read with the `safetensors` crate (independent of lorakit's reader).
#[derive(Debug, Clone, PartialEq)]
pub struct T {
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl T {
    pub fn f32(&self) -> Vec<f32> {
        match self.dtype {
            safetensors::Dtype::F32 => self
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::BF16 => self
                .data
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            safetensors::Dtype::F16 => self
                .data
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            d => panic!("not a float tensor: {d:?}"),
        }
    }
}

impl T {
    /// Cuts the tensor to `shape`: the elements that shape holds, from the first.
    pub fn cut_to(&mut self, shape: &[usize]) {
        let bytes = shape.iter().product::<usize>() * self.dtype.bitsize() / 8;
        self.data.truncate(bytes);
        self.shape = shape.to_vec();
    }
}

/// A checkpoint's (or an adapter file's) tensors by name.
pub type TensorMap = BTreeMap<String, T>;

pub fn read(path: &Path) -> TensorMap {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                T {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data: v.data().to_vec(),
                },
            )
        })
        .collect()
}

/// All tensors of a checkpoint file or folder (single or sharded).
pub fn read_checkpoint(path: &Path) -> TensorMap {
    if path.is_file() {
        return read(path);
    }
    let mut all = BTreeMap::new();
    let mut entries: Vec<_> = std::fs::read_dir(path)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.extension().is_some_and(|e| e == "safetensors") {
            for (k, v) in read(&p) {
                assert!(
                    all.insert(k.clone(), v).is_none(),
                    "tensor {k} in two shards"
                );
            }
        }
    }
    all
}

/// The largest |s·B·A − want| over max |want|, in f64: a PEFT module's factors `a` (`[r, k…]`)
/// and `b` (`[d, r]`) at scale `s` against a reference ΔW `want` stored F64 (numpy's truncation
/// in the sweeps' fixtures).
pub fn lowrank_error(a: &T, b: &T, s: f64, want: &T) -> f64 {
    assert_eq!(want.dtype, safetensors::Dtype::F64);
    let want: Vec<f64> = want
        .data
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let (d, r) = (b.shape[0], a.shape[0]);
    let k = a.shape[1..].iter().product::<usize>();
    assert_eq!(want.len(), d * k, "reference of {d}×{k}");
    let (av, bv) = (a.f32(), b.f32());
    let top = want.iter().fold(0f64, |x, y| x.max(y.abs()));
    let worst = (0..d * k)
        .map(|ij| {
            let (i, j) = (ij / k, ij % k);
            let got: f64 = (0..r)
                .map(|t| bv[i * r + t] as f64 * av[t * k + j] as f64)
                .sum::<f64>()
                * s;
            (got - want[ij]).abs()
        })
        .fold(0f64, f64::max);
    worst / top
}

/// ‖a − b‖_F / ‖b‖_F in f64.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// `got` is within `rel` (relative) of `want`: |got − want| ≤ rel·want (`what` names the
/// quantity in the message).
#[track_caller]
pub fn assert_rel_close(got: f64, want: f64, rel: f64, what: &str) {
    assert!(
        (got - want).abs() <= rel * want,
        "{what}: {got} vs {want} (relative tolerance {rel:e})"
    );
}

/// Checks a merged checkpoint against a reference holding only the tensors that changed:
/// changed tensors within `tol` relative (Frobenius), every other tensor byte-identical to the
/// base. Returns how many tensors were compared against the reference.
pub fn assert_matches_reference(
    out: &TensorMap,
    base: &TensorMap,
    reference: &TensorMap,
    tol: f64,
) -> usize {
    assert_eq!(
        out.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>(),
        "output has the base's tensors"
    );
    let mut changed = 0;
    for (name, t) in out {
        let b = &base[name];
        assert_eq!(t.shape, b.shape, "{name}: shape");
        match reference.get(name) {
            Some(r) => {
                assert_eq!(t.shape, r.shape, "{name}: shape vs reference");
                let e = rel_err(&t.f32(), &r.f32());
                assert!(e <= tol, "{name}: relative error {e:e} > {tol:e}");
                changed += 1;
            }
            None => assert!(
                t.data == b.data && t.dtype == b.dtype,
                "{name}: untouched tensor is not byte-identical"
            ),
        }
    }
    assert_eq!(
        changed,
        reference.len(),
        "every reference tensor is in the output"
    );
    changed
}

/// [`assert_matches_reference`] of the checkpoint merged at `out` from the base at `base`,
/// against the reference file `reference` (the changed tensors). Returns how many tensors were
/// compared against it.
pub fn assert_merged_matches(out: &Path, base: &Path, reference: &Path, tol: f64) -> usize {
    assert_matches_reference(
        &read_checkpoint(out),
        &read_checkpoint(base),
        &read(reference),
        tol,
    )
}

/// A GGUF merge `got` against a peer's GGUF `want` (e.g. `convert_hf_to_gguf.py` of PEFT's
/// merge): every tensor of `want` within 1e-6 relative once dequantized. Returns the largest
/// |difference| and the tensors `want` changed from `base`, in `want`'s order.
pub fn gguf_matches_reference(got: &Path, want: &Path, base: &Path) -> (f32, Vec<String>) {
    use lorakit::io::gguf::GgufModel;
    let (got, want, base) = (
        GgufModel::open(got).unwrap(),
        GgufModel::open(want).unwrap(),
        GgufModel::open(base).unwrap(),
    );
    let (mut worst, mut changed) = (0f32, Vec::new());
    for (_, t) in want.tensors() {
        let (g, w) = (
            got.dequantize(&t.name).unwrap(),
            want.dequantize(&t.name).unwrap(),
        );
        let e = rel_err(&g, &w);
        assert!(e <= 1e-6, "{}: relative error {e:e}", t.name);
        worst = g
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(worst, f32::max);
        if base.dequantize(&t.name).unwrap() != w {
            changed.push(t.name.clone());
        }
    }
    (worst, changed)
}

/// The largest |a − b| over the tensors of `reference` (what the peer changed), for a report.
pub fn max_abs_diff(out: &TensorMap, reference: &TensorMap) -> f64 {
    reference
        .iter()
        .flat_map(|(k, r)| {
            out[k]
                .f32()
                .into_iter()
                .zip(r.f32())
                .map(|(a, b)| (a as f64 - b as f64).abs())
        })
        .fold(0.0, f64::max)
}

/// Merges `fixtures/{case}/adapter` into the fixture `base` (with `--device cpu --quiet` and
/// `extra`) and compares with PEFT's merge_and_unload + save_pretrained in
/// `fixtures/{case}/merged.safetensors`: the changed tensors within 1e-6 relative (f32
/// rounding of the same sums in another order), every other tensor byte for byte. Prints the
/// max abs difference; returns how many tensors PEFT changed.
pub fn merge_matches_peft_fixture(case: &str, base: &str, extra: &[&str]) -> usize {
    let (_dir, out) = scratch("out");
    let base = fixture(base);
    run_ok(merge_args(
        &base,
        &fixture(&format!("{case}/adapter")),
        &out,
        &[&["--device", "cpu", "--quiet"], extra].concat(),
    ));
    let peft = read(&fixture(&format!("{case}/merged.safetensors")));
    let got = read_checkpoint(&out);
    let n = assert_matches_reference(&got, &read_checkpoint(&base), &peft, 1e-6);
    eprintln!(
        "{case}: max |lorakit − PEFT| = {:e}",
        max_abs_diff(&got, &peft)
    );
    n
}

/// The LoRA modules of a PEFT adapter file's tensors, in name order: the module path (without
/// `base_model.model.`) of every `lora_A.weight`, with its `lora_A` and `lora_B`.
pub fn peft_lora_modules(tensors: &TensorMap) -> Vec<(&str, &T, &T)> {
    let prefix = "base_model.model.";
    tensors
        .iter()
        .filter_map(|(k, a)| {
            let m = k.strip_prefix(prefix)?.strip_suffix(".lora_A.weight")?;
            Some((m, a, &tensors[&format!("{prefix}{m}.lora_B.weight")]))
        })
        .collect()
}

/// Little-endian bytes of f32 values (a tensor's data).
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    f32_bytes_of(v.iter().copied())
}

fn f32_bytes_of(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(|x| x.to_le_bytes()).collect()
}

/// A base of six 2048×`k` f32 tensors (48 MB at k = 1024) and a rank-16 PEFT adapter on all of
/// them: large enough for a merge to be interrupted while it writes.
pub fn big_case(dir: &Path, k: usize) -> (PathBuf, PathBuf) {
    use safetensors::{tensor::TensorView, Dtype};
    let base = dir.join("base.safetensors");
    let (d, r) = (2048usize, 16usize);
    let data: Vec<Vec<u8>> = (0..6)
        .map(|t| f32_bytes_of((0..d * k).map(move |i| ((i * 7 + t) % 13) as f32 * 0.01)))
        .collect();
    let names: Vec<String> = (0..6).map(|t| format!("layers.{t}.proj.weight")).collect();
    let views: Vec<(&str, TensorView)> = names
        .iter()
        .zip(&data)
        .map(|(n, b)| {
            (
                n.as_str(),
                TensorView::new(Dtype::F32, vec![d, k], b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &base).unwrap();
    let ad = dir.join("adapter");
    let a = f32_bytes_of((0..r * k).map(|i| (i % 5) as f32 * 0.001));
    let b = f32_bytes_of((0..d * r).map(|i| (i % 3) as f32 * 0.002));
    let modules: Vec<String> = (0..6).map(|t| format!("layers.{t}.proj")).collect();
    write_peft_adapter(
        &ad,
        r#"{"peft_type":"LORA","r":16,"lora_alpha":16,"target_modules":["proj"]}"#,
        &shared_lora_tensors(&modules, (&[r, k], &a), (&[d, r], &b)),
    );
    (base, ad)
}

/// A module's alpha as PEFT's `get_pattern_key` picks it: the first `alpha_pattern` key with
/// `re.match(rf"(.*\.)?({key})$", module)`, else `lora_alpha` (`None` when the config has none).
pub fn peft_alpha_for(cfg: &serde_json::Value, module: &str) -> Option<f64> {
    if let Some(pat) = cfg["alpha_pattern"].as_object() {
        for (k, v) in pat {
            if regex::Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
                .unwrap()
                .is_match(module)
            {
                return Some(v.as_f64().unwrap());
            }
        }
    }
    cfg["lora_alpha"].as_f64()
}

/// `tensors` written into `dir` as two Hugging Face shards and their index, dealt alternately
/// (so that a weight and its companions land in different shards).
pub fn write_alternate_shards(tensors: &TensorMap, dir: &Path) {
    let mut weight_map = serde_json::Map::new();
    for shard in 0..2 {
        let name = format!("model-0000{}-of-00002.safetensors", shard + 1);
        let part: TensorMap = tensors
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == shard)
            .map(|(_, (n, t))| {
                weight_map.insert(n.clone(), serde_json::json!(name));
                (n.clone(), t.clone())
            })
            .collect();
        write_tensors(&dir.join(&name), &part);
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
}

/// Writes `tensors` with the independent `safetensors` crate.
pub fn write_tensors(path: &Path, tensors: &TensorMap) {
    let views = tensors.iter().map(|(n, t)| {
        let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data);
        (n.clone(), view.unwrap())
    });
    safetensors::tensor::serialize_to_file(views, None, path).unwrap();
}

/// Flags and their values written as one command line, split at white space (for flags whose
/// values hold no space; paths go in as separate arguments).
pub fn flags(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The report of `lorakit inspect PATH --json` followed by `extra`.
pub fn inspect_json(path: &Path, extra: &[&str]) -> serde_json::Value {
    let out = run_ok(argv(&["inspect", s(path), "--json"], extra));
    serde_json::from_str(&out).expect("inspect --json prints JSON")
}

/// Runs `lorakit diff A B EXTRA…`, asserting its exit status `code` (0: within tolerance, 1:
/// not); returns stdout.
pub fn diff_exit(a: &Path, b: &Path, extra: &[&str], code: i32) -> String {
    let o = run_exit(diff_args(a, b, extra), code);
    String::from_utf8(o.stdout).expect("utf8 stdout")
}

/// Runs [`merge_args`], asserting success; returns stdout.
pub fn merge_ok(base: &Path, adapter: &Path, out: &Path, extra: &[&str]) -> String {
    run_ok(merge_args(base, adapter, out, extra))
}

/// [`merge_ok`] of two fixtures: `base` and `adapter` are paths under `fixtures/`.
pub fn merge_fixtures(base: &str, adapter: &str, out: &Path, extra: &[&str]) -> String {
    merge_ok(&fixture(base), &fixture(adapter), out, extra)
}

/// The error line of a merge of `qv_r8` into the llama base file whose output `out` cannot be
/// written, checked to be one line and exit status 3.
pub fn unwritable_merge_error(out: &Path) -> String {
    let res = run_err(merge_fixtures_args(
        "llama/base/model.safetensors",
        "llama/adapters/qv_r8",
        out,
        &[],
    ));
    let err = String::from_utf8_lossy(&res.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        res.status.code(),
        Some(3),
        "an output that cannot be written is exit 3: {err}"
    );
    err
}

/// A base holding `a.b_c.weight` and `a_b.c.weight` (2×2 zeros; both read `a_b_c` in kohya's
/// underscored names) and a kohya adapter for `lora_unet_a_b_c` (rank 1, ones), which fits
/// either: `(base, adapter)`, written into `dir`.
pub fn ambiguous_kohya_case(dir: &Path) -> (PathBuf, PathBuf) {
    let write = |name: &str, tensors: [(&str, Vec<usize>, Vec<u8>); 2]| {
        let path = dir.join(name);
        let views = tensors.iter().map(|(n, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes);
            (*n, view.unwrap())
        });
        safetensors::serialize_to_file(views, None, &path).unwrap();
        path
    };
    let (zeros, ones) = (
        f32_bytes_of([0f32; 4].into_iter()),
        f32_bytes_of([1f32; 2].into_iter()),
    );
    let base = write(
        "base.safetensors",
        [
            ("a.b_c.weight", vec![2, 2], zeros.clone()),
            ("a_b.c.weight", vec![2, 2], zeros),
        ],
    );
    let adapter = write(
        "k.safetensors",
        [
            ("lora_unet_a_b_c.lora_down.weight", vec![1, 2], ones.clone()),
            ("lora_unet_a_b_c.lora_up.weight", vec![2, 1], ones),
        ],
    );
    (base, adapter)
}

/// `line` refuses the kohya name of [`ambiguous_kohya_case`] as ambiguous, naming both tensors.
pub fn assert_ambiguous_kohya(line: &str) {
    assert_mentions(line, &["ambiguous", "a.b_c.weight", "a_b.c.weight"]);
}

/// The llama fixture with `qv_r8` merged in (the tuned model most tests extract from or compare
/// with), through [`merge_ok`].
pub fn merge_qv_r8(out: &Path, extra: &[&str]) -> String {
    merge_qv_r8_into(&fixture("llama/base"), out, extra)
}

/// [`merge_ok`] of the `qv_r8` adapter (rank 8 on q/v of the llama fixture's two layers), the
/// adapter of every test about the base side (a quantized, sharded or edited llama).
pub fn merge_qv_r8_into(base: &Path, out: &Path, extra: &[&str]) -> String {
    merge_ok(base, &fixture("llama/adapters/qv_r8"), out, extra)
}

/// [`merge_refused`] of the `qv_r8` adapter into `base` (see [`merge_qv_r8_into`]).
pub fn merge_qv_r8_refused(base: &Path, out: &Path, extra: &[&str]) -> String {
    merge_refused(base, &fixture("llama/adapters/qv_r8"), out, extra)
}

/// Writes a PEFT adapter folder: `adapter_model.safetensors` with the f32 tensors
/// `(name, shape, little-endian bytes)` and `adapter_config.json` = `config`.
pub fn write_peft_adapter(dir: &Path, config: &str, tensors: &[(String, Vec<usize>, Vec<u8>)]) {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("adapter_model.safetensors");
    write_all_as(&file, safetensors::Dtype::F32, tensors, None);
    std::fs::write(dir.join("adapter_config.json"), config).unwrap();
}

/// Writes the tensors `(name, shape, little-endian bytes)`, all of `dtype`, and `metadata` to
/// `path` with the independent `safetensors` crate.
pub fn write_all_as(
    path: &Path,
    dtype: safetensors::Dtype,
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    metadata: Option<std::collections::HashMap<String, String>>,
) {
    let views = tensors.iter().map(|(n, shape, b)| {
        let view = safetensors::tensor::TensorView::new(dtype, shape.clone(), b);
        (n.as_str(), view.unwrap())
    });
    safetensors::serialize_to_file(views, metadata, path).unwrap();
}

/// PEFT's `lora_A` / `lora_B` entries of `modules` (paths without `base_model.model.`), every
/// module with the same factors `a` and `b` `(shape, f32 bytes)`, for [`write_peft_adapter`].
pub fn shared_lora_tensors(
    modules: &[String],
    a: (&[usize], &[u8]),
    b: (&[usize], &[u8]),
) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    modules
        .iter()
        .flat_map(|m| {
            [
                (
                    format!("base_model.model.{m}.lora_A.weight"),
                    a.0.to_vec(),
                    a.1.to_vec(),
                ),
                (
                    format!("base_model.model.{m}.lora_B.weight"),
                    b.0.to_vec(),
                    b.1.to_vec(),
                ),
            ]
        })
        .collect()
}

/// The one GPU-skip policy of the integration tests: whether `lorakit gpu-info` finds a wgpu
/// adapter. Without one a test skips loudly (`GPU TEST SKIPPED: …` on stderr) and passes,
/// unless `LORAKIT_REQUIRE_GPU=1` (CI, lavapipe here), where it fails.
pub fn gpu_available() -> bool {
    let out = bin().args(["gpu-info", "--json"]).output().unwrap();
    if out.status.success() {
        return true;
    }
    let why = String::from_utf8_lossy(&out.stderr).into_owned();
    if std::env::var("LORAKIT_REQUIRE_GPU").as_deref() == Ok("1") {
        panic!("LORAKIT_REQUIRE_GPU=1 but no GPU adapter: {why}");
    }
    eprintln!("GPU TEST SKIPPED: no wgpu adapter: {}", why.trim());
    false
}

/// The one Python policy of the PEFT tests: `LORAKIT_PYTHON`, else `python3`, if it imports
/// torch, transformers and peft. Without one a test skips loudly (`PEFT TEST SKIPPED: …` on
/// stderr) and passes, unless `LORAKIT_REQUIRE_PEFT=1`, where it fails.
pub fn peft_python() -> Option<PathBuf> {
    let py = std::env::var_os("LORAKIT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let ok = std::process::Command::new(&py)
        .args(["-c", "import torch, transformers, peft"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(py);
    }
    let why = format!(
        "{} cannot import torch, transformers and peft (set LORAKIT_PYTHON to a Python with \
         fixtures/gen/requirements.txt)",
        py.display()
    );
    if std::env::var("LORAKIT_REQUIRE_PEFT").as_deref() == Ok("1") {
        panic!("LORAKIT_REQUIRE_PEFT=1 but {why}");
    }
    eprintln!("PEFT TEST SKIPPED: {why}");
    None
}

/// Runs `lorakit LINE --json` for each command line (split at spaces: the paths the callers
/// pass, a tempdir and the fixtures folder, hold none), each exiting at most `max_code`, and
/// checks that the reports speak one JSON vocabulary: an object whose first key is `operation`,
/// naming the command typed; `files` always a list; no key a number in one report and a list in
/// another (counts are `*_count`). Returns the reports.
pub fn assert_one_json_vocabulary(lines: &[String], max_code: i32) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    let mut reports = Vec::new();
    for line in lines {
        let argv: Vec<&str> = line.split_whitespace().collect();
        let out = bin().args(&argv).arg("--json").output().unwrap();
        assert!(
            out.status.code().is_some_and(|c| c <= max_code),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{line}: not JSON ({e})"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("{line}: not an object"));
        assert_eq!(
            obj.keys().next().map(String::as_str),
            Some("operation"),
            "{line}"
        );
        assert_eq!(v["operation"], argv[0], "{line}");
        key_kinds(&v, argv[0], &mut seen);
        reports.push(v);
    }
    for (k, kind, at) in &seen {
        if k == "files" {
            assert_eq!(*kind, "list", "{at} is not a list");
        }
        if *kind == "number" {
            if let Some((_, _, other)) = seen.iter().find(|(k2, kd, _)| k2 == k && *kd == "list") {
                panic!("{k} is a number at {at} and a list at {other}: name the count {k}_count");
            }
        }
    }
    reports
}

/// Every key of a JSON value, with the kind of value it holds and where, recursively.
fn key_kinds(v: &serde_json::Value, path: &str, out: &mut Vec<(String, &'static str, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let kind = match x {
                    serde_json::Value::Array(_) => "list",
                    serde_json::Value::Number(_) => "number",
                    serde_json::Value::Object(_) => "object",
                    serde_json::Value::String(_) => "string",
                    serde_json::Value::Bool(_) => "bool",
                    serde_json::Value::Null => "null",
                };
                out.push((k.clone(), kind, format!("{path}.{k}")));
                key_kinds(x, &format!("{path}.{k}"), out);
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                key_kinds(x, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

/// `fixtures/gen/{script}` run by `py` in the repository root with `args`: its output, whatever
/// its exit status.
pub fn python_run(py: &Path, script: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(py)
        .arg(fixture(&format!("gen/{script}")))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

/// Runs the Python oracle `fixtures/gen/{script} ARGS…` with `py` (a [`peft_python`]) from the
/// crate root and asserts that it succeeded, its stdout and stderr in the message otherwise;
/// returns its stdout (the JSON verdict of most oracles).
#[track_caller]
pub fn python_ok(py: &Path, script: &str, args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let o = python_run(py, script, args);
    assert!(
        o.status.success(),
        "{script} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Asserts that `text` (an error line, a report) contains every one of `parts`; the message
/// names the first part missing and shows the whole text.
#[track_caller]
pub fn assert_mentions(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "`{part}` not in: {text}");
    }
}

/// Runs lorakit with `args` expecting a refusal: a non-zero exit, one error line (returned), and
/// nothing at `out`.
pub fn refused<I, S>(args: I, out: &Path) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let line = one_line_error(&run_err(args));
    assert!(!out.exists(), "{} written: {line}", out.display());
    line
}

/// [`merge_refused`] of two fixtures (paths under `fixtures/`).
pub fn merge_fixtures_refused(base: &str, adapter: &str, out: &Path, extra: &[&str]) -> String {
    merge_refused(&fixture(base), &fixture(adapter), out, extra)
}

/// [`refused`] for [`merge_args`].
pub fn merge_refused(base: &Path, adapter: &Path, out: &Path, extra: &[&str]) -> String {
    refused(merge_args(base, adapter, out, extra), out)
}

/// Writes `(name, dtype, shape, little-endian bytes)` tensors to `path` with the independent
/// `safetensors` crate.
pub fn write_views(path: &Path, tensors: &[(&str, safetensors::Dtype, &[usize], &[u8])]) {
    let views = tensors.iter().map(|&(name, dtype, shape, bytes)| {
        let view = safetensors::tensor::TensorView::new(dtype, shape.to_vec(), bytes);
        (name, view.unwrap())
    });
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// The `name` of every entry of a JSON report's `modules` list, in order.
pub fn module_names(v: &serde_json::Value) -> Vec<&str> {
    field_strs(&v["modules"], "name")
}

/// f32: within 1e-5 of the largest update (`want − base`) or 4 f32 ulps of the largest weight,
/// elementwise — the bound of the diffusers sweeps (`check_diffusers_sweep.py`,
/// `check_diffusers_formats_sweep.py`: diffusers/PEFT round B·A and the sum in their own order).
pub fn assert_f32_close(name: &str, got: &[f32], want: &[f32], base: &[f32]) {
    let upd = want
        .iter()
        .zip(base)
        .map(|(w, b)| (w - b).abs() as f64)
        .fold(0.0, f64::max);
    let big = want.iter().map(|w| w.abs() as f64).fold(0.0, f64::max);
    let lim = 1e-5 * upd + 4.0 * f32::EPSILON as f64 * big;
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() as f64)
        .fold(0.0, f64::max);
    assert!(
        worst <= lim,
        "{name}: max |lorakit − reference| {worst:e} > {lim:e}"
    );
}

/// Every file under `dir` (recursively) with its bytes, sorted by path: equal before and after
/// a refused run shows that nothing was written, changed or removed.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                v.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    v.sort();
    v
}
