//! GPU kernels against their CPU twins.
//!
//! Skip policy ([`context`]): with no wgpu adapter a test prints
//! `GPU TEST SKIPPED: no wgpu adapter: …` and passes, unless `LORAKIT_REQUIRE_GPU=1`, when it
//! fails. Any other context error fails. Two contexts are shared by all tests: the default one
//! and one whose bindings are capped at [`TILED_LIMIT`] bytes, so that every op on it tiles.
//!
//! Tolerances:
//! * merge: bit-identical bytes for F16/BF16 outputs (the kernel follows the CPU's operation
//!   order exactly and cannot contract to FMA); F32 outputs within 1 ulp (observed: identical).
//! * DoRA norms ([`dora`]): the f64 sums, the software f64 square and add, and DoRA merges in
//!   every dtype (F32 included) bit-identical, no tolerance.
//! * forward / sketch (different summation orders, tiled GEMM vs the CPU's blocked GEMMs): the
//!   f32 dot-product error bound for both sides, `|gpu − cpu| ≤ 2·γ·S` with `γ = (K + 2)·2⁻²⁴`,
//!   `K` the longest inner dimension and `S` the same product on absolute values
//!   (`|X|·|W0|ᵀ + …`), computed by the CPU twin on `|inputs|`. It is rigorous to first order and
//!   independent of the data's scale; random data lands far inside it. The forward's CPU twin is
//!   the one eval runs (`model::linear::Linear::forward` on `Exec::Cpu`); the sketches' is
//!   `backend::cpu_forward`.

use super::kernels::{self, CONVERT_WG};
use super::merge::merge_with;
use super::merge_tiles::merge_tiles;
use super::*;
use crate::backend::cpu_forward::{self, DeltaPair, ForwardAdapter, StoredMatrix};
use crate::backend::{cpu, Dora, MergeError, MergeJob, NormAxis, Term};
use crate::dtype::{self, Dtype};
use crate::linalg::rng::Xoshiro256PlusPlus as Rng;
use crate::linalg::{randomized_svd, LinearOperator, RsvdOptions};
use std::sync::OnceLock;

mod dora;
mod forward;
mod merge;
mod sketch;

/// Binding cap of the tiling context: small enough that every tiling test splits its tensors.
const TILED_LIMIT: u64 = 8 << 10;
const DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::BF16];

/// Runs a test-only 1-D kernel over raw words (`shaders/convert.wgsl`, `shaders/f64_check.wgsl`:
/// params `{n, mode}`, bindings `[params, input, output]`, `wg` invocations per workgroup) for
/// `n` cases, reading back `out_words` words.
fn run_words(
    ctx: &GpuContext,
    spec: &kernels::KernelSpec,
    wg: u32,
    mode: u32,
    input: &[u32],
    n: usize,
    out_words: usize,
) -> Vec<u32> {
    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    struct P {
        n: u32,
        mode: u32,
        pad: [u32; 2],
    }
    let kernel = ctx.kernel(spec, &[]).unwrap();
    ctx.scoped(|| {
        let params = P {
            n: n as u32,
            mode,
            pad: [0; 2],
        };
        let p = ctx.uniform(spec.name, &params);
        let inp = ctx.upload(spec.name, bytemuck::cast_slice(input));
        let out = ctx.output(spec.name, out_words as u64 * 4);
        let mut enc = ctx.encoder();
        let grid = ctx.grid_1d(n as u64, wg);
        ctx.dispatch(&mut enc, &kernel, &[&p, &inp, &out], grid);
        let bytes = ctx.submit_and_read(enc, &[(&out, out_words as u64 * 4)])?;
        Ok(bytemuck::pod_collect_to_vec(&bytes[0]))
    })
    .unwrap()
}

/// Without an adapter: fails under `LORAKIT_REQUIRE_GPU=1`, otherwise says so loudly.
fn skip_or_fail(reason: &str) {
    if std::env::var("LORAKIT_REQUIRE_GPU").as_deref() == Ok("1") {
        panic!("LORAKIT_REQUIRE_GPU=1 but no wgpu adapter: {reason}");
    }
    // Straight to the stderr handle: libtest captures eprintln! of passing tests.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "GPU TEST SKIPPED: no wgpu adapter: {reason}"
    );
}

/// The one place that decides between running, skipping and failing a GPU test.
fn context(
    slot: &'static OnceLock<Result<GpuContext, GpuError>>,
    make: fn() -> Result<GpuContext, GpuError>,
) -> Option<&'static GpuContext> {
    match slot.get_or_init(make) {
        Ok(ctx) => Some(ctx),
        Err(GpuError::NoAdapter(reason)) => {
            skip_or_fail(reason);
            None
        }
        Err(e) => panic!("GPU context creation failed: {e}"),
    }
}

fn gpu() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Result<GpuContext, GpuError>> = OnceLock::new();
    context(&CTX, GpuContext::new)
}

/// A context of the caller's own (not shared with other tests, so its counters are the
/// caller's), under the same run/skip/fail policy.
pub(crate) fn fresh_gpu() -> Option<GpuContext> {
    match GpuContext::new() {
        Ok(ctx) => Some(ctx),
        Err(GpuError::NoAdapter(reason)) => {
            skip_or_fail(&reason);
            None
        }
        Err(e) => panic!("GPU context creation failed: {e}"),
    }
}

/// A context with the default binding limit but 4 KiB merge chunks: every merge streams many
/// tiles through the ring.
fn gpu_chunked() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Result<GpuContext, GpuError>> = OnceLock::new();
    context(&CTX, || {
        GpuContext::with_options(&GpuOptions {
            chunk_bytes: Some(4096),
            ..GpuOptions::default()
        })
    })
}

/// A context created without any optional feature (the DoRA tests run on it too: no result
/// may depend on what the adapter offers).
fn gpu_plain() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Result<GpuContext, GpuError>> = OnceLock::new();
    context(&CTX, || {
        GpuContext::with_options(&GpuOptions {
            features: OptionalFeatures::Off,
            ..GpuOptions::default()
        })
    })
}

fn gpu_tiled() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Result<GpuContext, GpuError>> = OnceLock::new();
    context(&CTX, || GpuContext::with_binding_limit(TILED_LIMIT))
}

fn uniform(seed: &mut Rng) -> f32 {
    // Uniform on [-0.5, 0.5), from the one seeded generator (linalg::rng).
    (seed.next_f64() - 0.5) as f32
}

fn rand(n: usize, seed: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| uniform(seed)).collect()
}

/// Distance in units in the last place between two finite f32s.
fn ulps(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        (if i < 0 { i32::MIN - i } else { i }) as i64
    };
    (key(a) - key(b)).unsigned_abs()
}

/// Asserts the GPU merge equals the CPU merge: same error, or same bytes (F16/BF16) / ≤ 1 ulp
/// (F32). Returns the number of F32 elements that were not bit-identical.
fn assert_merge_matches(ctx: &GpuContext, job: &MergeJob, what: &str) -> usize {
    let want = cpu::merge(job);
    let got = merge(ctx, job);
    match (want, got) {
        (Ok(w), Ok(g)) => {
            assert_eq!(w.len(), g.len(), "{what}: output length");
            if job.out_dtype == Dtype::F32 {
                let (w, g) = (dtype::decode(Dtype::F32, &w), dtype::decode(Dtype::F32, &g));
                let mut inexact = 0;
                for (i, (a, b)) in w.iter().zip(&g).enumerate() {
                    let u = ulps(*a, *b);
                    assert!(
                        u <= 1,
                        "{what}: element {i}: cpu {a:e} gpu {b:e} ({u} ulps)"
                    );
                    inexact += (u != 0) as usize;
                }
                inexact
            } else {
                if let Some(i) = w.iter().zip(&g).position(|(a, b)| a != b) {
                    let e = i / 2;
                    panic!(
                        "{what}: element {e} (row {}, col {}) differs: cpu {:02x?} gpu {:02x?}",
                        e / job.cols,
                        e % job.cols,
                        &w[e * 2..e * 2 + 2],
                        &g[e * 2..e * 2 + 2]
                    );
                }
                0
            }
        }
        (Err(w), Err(g)) => {
            assert_eq!(format!("{w:?}"), format!("{g:?}"), "{what}: errors differ");
            0
        }
        (w, g) => panic!(
            "{what}: cpu {:?} but gpu {:?}",
            w.map(|_| ()),
            g.map(|_| ())
        ),
    }
}

struct Factors {
    b: Vec<f32>,
    a: Vec<f32>,
    rank: usize,
}

fn factors(rows: usize, cols: usize, rank: usize, seed: &mut Rng) -> Factors {
    Factors {
        b: rand(rows * rank, seed),
        a: rand(rank * cols, seed),
        rank,
    }
}

impl Factors {
    fn term(&self, scale: f32) -> Term<'_> {
        Term::low_rank(&self.b, &self.a, self.rank, scale)
    }
}

#[test]
fn context_describes_itself_and_compiles_every_kernel() {
    let Some(ctx) = gpu() else { return };
    ctx.compile_all().unwrap();
    let info = serde_json::to_value(ctx.describe()).unwrap();
    for key in [
        "name",
        "backend",
        "device_type",
        "driver",
        "limits",
        "tile_binding_bytes",
    ] {
        assert!(info.get(key).is_some(), "{key} missing from {info}");
    }
    eprintln!("gpu: {info}");
    assert!(GpuContext::with_binding_limit(1).is_ok_and(|c| c.max_binding() == 256));
}

/// `|got − want| ≤ 2·(depth + 2)·2⁻²⁴·S` element by element.
fn assert_within_bound(got: &[f32], want: &[f32], s: &[f32], depth: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let gamma = 2.0 * (depth as f64 + 2.0) * 2f64.powi(-24);
    let mut worst = 0f64;
    for (i, ((g, w), s)) in got.iter().zip(want).zip(s).enumerate() {
        let err = (*g as f64 - *w as f64).abs();
        let tol = gamma * *s as f64 + 1e-30;
        assert!(
            err <= tol,
            "{what}: element {i}: gpu {g} cpu {w}, |diff| {err:e} > {tol:e}"
        );
        worst = worst.max(err / tol);
    }
    assert!(worst < 1.0);
}

/// The `--device auto` probe runs on this adapter, is byte-identical to the CPU, and is timed;
/// on a software adapter the rule stops before the probe.
#[test]
fn auto_probe_matches_cpu_and_rule_rejects_software() {
    let Some(ctx) = gpu() else { return };
    let p = crate::backend::probe_merge(ctx).unwrap();
    assert!(p.identical, "probe merge differs from the CPU");
    assert!(p.gpu_s > 0.0 && p.cpu_s > 0.0, "{p:?}");
    eprintln!(
        "auto probe on {}: gpu {:.4} s, cpu {:.4} s",
        ctx.describe().adapter.name,
        p.gpu_s,
        p.cpu_s
    );
    let choice = crate::backend::decide_auto(ctx);
    if ctx.describe().adapter.device_type == "Cpu" {
        assert!(
            matches!(choice, crate::backend::AutoChoice::Software { .. }),
            "{choice:?}"
        );
    } else {
        assert!(
            matches!(
                choice,
                crate::backend::AutoChoice::Gpu { .. } | crate::backend::AutoChoice::Slower { .. }
            ),
            "{choice:?}"
        );
    }
}

/// `--gpu-index`: every listed adapter opens by its index and is the one listed; an index past
/// the list is a clear error.
#[test]
fn adapters_open_by_index() {
    if gpu().is_none() {
        return;
    }
    let list = list_adapters();
    assert!(!list.is_empty());
    for e in &list {
        let ctx = GpuContext::with_options(&GpuOptions {
            adapter: Some(AdapterSelector::Index(e.index)),
            ..GpuOptions::default()
        })
        .unwrap();
        assert_eq!(ctx.describe().adapter.name, e.adapter.name);
    }
    let err = GpuContext::with_options(&GpuOptions {
        adapter: Some(AdapterSelector::Index(list.len())),
        ..GpuOptions::default()
    })
    .unwrap_err();
    assert!(
        matches!(&err, GpuError::NoAdapter(m) if m.contains(&format!("index {}", list.len()))),
        "{err}"
    );
}

/// `--gpu-index pci:…`: bus ids parse in wgpu's, the short and nvidia-smi's spellings and not
/// otherwise; a selector finds the adapter reporting that id, and a miss (or an adapter that
/// reports none, as lavapipe) is one line naming every adapter's id.
#[test]
fn adapters_selected_by_pci_bus_id() {
    let id = |s: &str| s.parse::<PciBusId>();
    let want = PciBusId {
        domain: 0,
        bus: 0x65,
        device: 0,
        function: 0,
    };
    for s in [
        "0000:65:00.0",
        "65:00.0",
        "00000000:65:00.0",
        "0000:65:00.0 ",
    ] {
        assert_eq!(id(s), Ok(want), "{s}");
    }
    assert_eq!(id("0000:65:00.0").unwrap().to_string(), "0000:65:00.0");
    assert_eq!(id("1:AB:1f.7").unwrap().to_string(), "0001:ab:1f.7");
    for bad in [
        "",
        "65:00",
        "65.0",
        "0000:65:20.0",
        "0000:65:00.8",
        "x:65:00.0",
        "1:2:3:4.0",
        "123:00.0",
    ] {
        assert!(id(bad).is_err(), "{bad:?} parsed");
    }
    assert_eq!("3".parse(), Ok(AdapterSelector::Index(3)));
    assert_eq!("pci:65:00.0".parse(), Ok(AdapterSelector::Pci(want)));
    assert!("pci:".parse::<AdapterSelector>().is_err());
    assert!("gpu0".parse::<AdapterSelector>().is_err());
    assert_eq!(AdapterSelector::Pci(want).to_string(), "pci:0000:65:00.0");

    let listed = |ids: &[&str]| -> Vec<AdapterIdentity> {
        ids.iter()
            .map(|&pci_bus_id| AdapterIdentity {
                name: "n".into(),
                backend: "vulkan".into(),
                device_type: "DiscreteGpu".into(),
                vendor: 0x10de,
                device: 1,
                driver: "d".into(),
                pci_bus_id: pci_bus_id.into(),
            })
            .collect()
    };
    let two = listed(&["", "0000:01:00.0", "0000:65:00.0"]);
    assert_eq!(AdapterSelector::Pci(want).position(&two), Ok(2));
    assert_eq!(AdapterSelector::Index(1).position(&two), Ok(1));
    let miss = AdapterSelector::Pci(want).position(&listed(&["", "0000:01:00.0"]));
    assert_eq!(
        miss.unwrap_err().to_string(),
        "no wgpu adapter: no adapter at PCI bus id 0000:65:00.0 (bus ids: [0] none reported, \
         [1] 0000:01:00.0)"
    );
    assert!(AdapterSelector::Pci(want).position(&[]).is_err());

    // The adapters of this machine: each one reporting a bus id opens by it.
    if gpu().is_none() {
        return;
    }
    let list = list_adapters();
    for e in &list {
        let Ok(pci) = e.adapter.pci_bus_id.parse::<PciBusId>() else {
            let err = GpuContext::with_options(&GpuOptions {
                adapter: Some(AdapterSelector::Pci(PciBusId { bus: 0xfe, ..want })),
                ..GpuOptions::default()
            })
            .unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("[{}] none reported", e.index)),
                "{err}"
            );
            continue;
        };
        let ctx = GpuContext::with_options(&GpuOptions {
            adapter: Some(AdapterSelector::Pci(pci)),
            ..GpuOptions::default()
        })
        .unwrap();
        assert_eq!(ctx.describe().adapter.pci_bus_id, e.adapter.pci_bus_id);
    }
}

/// Timestamps, subgroups and f16 are requested exactly where the adapter offers them (lavapipe
/// offers all three), reported with the subgroup sizes, and `OptionalFeatures::Off` requests none.
#[test]
fn optional_features_requested_where_offered() {
    let (Some(ctx), Some(plain)) = (gpu(), gpu_plain()) else {
        return;
    };
    let offered: Vec<&str> = OPTIONAL_FEATURES
        .iter()
        .filter(|(f, _)| ctx._adapter.features().contains(*f))
        .map(|(_, n)| *n)
        .collect();
    let info = ctx.describe();
    assert_eq!(info.features, offered);
    assert_eq!(
        info.subgroup_sizes.is_some(),
        offered.contains(&"subgroups")
    );
    if let Some([lo, hi]) = info.subgroup_sizes {
        assert!(lo >= 1 && lo <= hi && hi.is_power_of_two(), "{lo}..{hi}");
    }
    assert_eq!(plain.describe().features, Vec::<&str>::new());
    assert_eq!(plain.describe().subgroup_sizes, None);
    eprintln!("optional features on {}: {offered:?}", info.adapter.name);
}

/// The benchmark helpers `scripts/gpu-bench.sh` relies on run on this adapter: the copy kernel
/// copies, the transfer round trip keeps the bytes (checked inside), the merge kernel alone
/// runs at a rank that needs several chunks, and every time is positive, from timestamp
/// queries wherever the adapter has them.
#[test]
fn bench_helpers_time_kernels() {
    let Some(ctx) = gpu() else { return };
    let stamps = bench::has_timestamps(ctx);
    let copy = bench::copy_kernel(ctx, 1 << 20, 2).unwrap();
    let merge = bench::merge_kernel(ctx, 40, 300, 20, 2).unwrap();
    let gemm = bench::gemm_kernel(ctx, 130, 70, 33, 3, 2).unwrap();
    for t in [copy, merge, gemm] {
        assert!(t.wall_s > 0.0, "{t:?}");
        assert_eq!(t.device_s.is_some(), stamps, "{t:?}");
        assert!(t.device_s.is_none_or(|d| d > 0.0), "{t:?}");
    }
    let (up, down) = bench::transfer(ctx, 1 << 20, 1).unwrap();
    assert!(up > 0.0 && down > 0.0);
    eprintln!("timestamps on {}: {stamps}", ctx.describe().adapter.name);
}
