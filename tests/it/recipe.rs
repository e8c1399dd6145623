//! Recipes: validation before work, dry-run plan, step references, incremental reruns.

use super::common::*;
use std::path::Path;

fn write_recipe(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("r.toml");
    let fx = fixture("");
    std::fs::write(&p, body.replace("FX/", &format!("{}/", fx.display()))).unwrap();
    p
}

/// The adapter the recipes below merge.
const QV: &str = "FX/llama/adapters/qv_r8";

/// A `merge` step of a recipe: `adapter` into `base`, written to `out`, `extra` (TOML lines)
/// after its `out`.
fn merge_step(name: &str, base: &str, adapter: &str, out: &str, extra: &str) -> String {
    format!(
        "\n[[step]]\nname = \"{name}\"\ncommand = \"merge\"\nbase = \"{base}\"\n\
         adapter = [\"{adapter}\"]\nout = \"{out}\"\n{extra}"
    )
}

/// A `diff` step of `a` against `b`, `extra` (TOML lines) after `b`.
fn diff_step(name: &str, a: &str, b: &str, extra: &str) -> String {
    format!("\n[[step]]\nname = \"{name}\"\ncommand = \"diff\"\na = \"{a}\"\nb = \"{b}\"\n{extra}")
}

/// Merge `qv_r8` into `base`, unmerge it, and diff against `base`: three steps, each reading
/// the one before; the outputs are `out/merged{ext}` and `out/restored{ext}`.
fn recipe_on(base: &str, ext: &str) -> String {
    [
        merge_step("merged", base, QV, &format!("out/merged{ext}"), ""),
        merge_step(
            "again",
            "${merged.out}",
            QV,
            &format!("out/restored{ext}"),
            "unmerge = true\n",
        ),
        diff_step("check", "${again.out}", base, "tolerance = 1e-6\n"),
    ]
    .concat()
}

/// [`recipe_on`] the llama fixture.
fn recipe() -> String {
    recipe_on("FX/llama/base", "")
}

/// A copy of the `qv_r8` adapter's config and weights at `dir/qv`, for the tests that edit it.
fn copy_qv(dir: &Path) -> std::path::PathBuf {
    let copy = dir.join("qv");
    std::fs::create_dir(&copy).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture("llama/adapters/qv_r8").join(f), copy.join(f)).unwrap();
    }
    copy
}

#[test]
fn recipe_runs_steps_in_order_and_skips_up_to_date_ones() {
    let dir = tempfile::tempdir().unwrap();
    let r = write_recipe(dir.path(), &recipe());
    let plan = run_ok(run_args(&r, &["--dry-run", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(v["operation"], "run");
    let v = &v["items"];
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert_eq!(v[0]["action"], "run");
    // The first merge is fully planned: 21 tensors of f32, 361728 bytes.
    assert_eq!(v[0]["bytes_written"], 361728);
    assert!(v[0]["bytes_read"].as_u64().unwrap() > 361728);
    assert!(!dir.path().join("out").exists(), "dry-run writes nothing");

    let o = bin().args(run_args(&r, &[])).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.path().join("out/restored/model.safetensors").exists());
    // Second run: everything up to date.
    let o = bin().args(run_args(&r, &[])).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success());
    assert_eq!(err.matches("up to date, skipped").count(), 2, "{err}");
    // Touching an input reruns the steps that depend on it.
    let copy = copy_qv(dir.path());
    let r2 = write_recipe(
        dir.path(),
        &recipe().replace(
            "FX/llama/adapters/qv_r8\"]\nout = \"out/merged\"",
            &format!("{}\"]\nout = \"out/merged\"", copy.display()),
        ),
    );
    let o = bin().args(run_args(&r2, &[])).output().unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("[merged] (options changed) merge"), "{err}");
}

/// The `action` and `reason` of every step of `--dry-run --json`.
fn actions(recipe: &Path, extra: &[&str]) -> Vec<(String, String)> {
    let args = run_args(recipe, &[&["--dry-run", "--json"], extra].concat());
    let v: serde_json::Value = serde_json::from_str(&run_ok(args)).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["action"].as_str().unwrap().to_owned(),
                s["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn reruns_follow_input_content_not_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let copy = copy_qv(dir.path());
    let r = write_recipe(
        dir.path(),
        &recipe().replace("FX/llama/adapters/qv_r8", s(&copy)),
    );
    let o = bin().args(run_args(&r, &[])).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let skip = |n: usize| vec![("skip".to_string(), String::new()); n];
    assert_eq!(
        actions(&r, &[]),
        skip(3)[..2]
            .iter()
            .cloned()
            .chain([("run".into(), "no output to check".into())])
            .collect::<Vec<_>>()
    );

    // Touched (new mtime, same bytes): still up to date.
    let weights = copy.join("adapter_model.safetensors");
    let f = std::fs::File::options().write(true).open(&weights).unwrap();
    let t0 = f.metadata().unwrap().modified().unwrap();
    f.set_modified(t0 + std::time::Duration::from_secs(60))
        .unwrap();
    drop(f);
    assert_eq!(actions(&r, &[])[..2], skip(2)[..]);

    // Edited in place with the recorded size and mtime restored: the content hash sees it.
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x01;
    std::fs::write(&weights, &bytes).unwrap();
    let f = std::fs::File::options().write(true).open(&weights).unwrap();
    f.set_modified(t0).unwrap();
    drop(f);
    let a = actions(&r, &[]);
    assert_eq!(a[0].0, "run");
    assert!(
        a[0].1.ends_with("adapter_model.safetensors changed"),
        "{a:?}"
    );
    // … which --trust-mtime, by design, does not.
    assert_eq!(actions(&r, &["--trust-mtime"])[..2], skip(2)[..]);
    // --force runs everything.
    assert!(actions(&r, &["--force"])
        .iter()
        .all(|(a, w)| a == "run" && w == "forced"));

    // Rerun: both merges run again (the second because its input, the first output, changed).
    let o = bin().args(run_args(&r, &[])).output().unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_mentions(&err, &["[merged] (", "[again] ("]);
    assert_eq!(actions(&r, &[])[..2], skip(2)[..]);

    // An output edited after its step finished is rewritten.
    let merged = dir.path().join("out/merged/model.safetensors");
    let mut data = std::fs::read(&merged).unwrap();
    let n = data.len();
    data[n - 1] ^= 0x01;
    std::fs::write(&merged, &data).unwrap();
    let a = actions(&r, &[]);
    assert_eq!(
        a[0],
        ("run".to_string(), "the output was modified".to_string())
    );
}

#[test]
fn invalid_recipes_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    for (body, expect) in [
        (
            recipe().replace("${merged.out}", "${nosuch.out}"),
            "not an earlier step",
        ),
        (
            recipe().replace("FX/llama/base\"\nadapter", "FX/llama/nosuch\"\nadapter"),
            "does not exist",
        ),
        (
            recipe().replace("unmerge = true", "unmerge = true\nbogus = 3"),
            "step `again` (merge)",
        ),
        (
            recipe().replace("command = \"diff\"", "command = \"frobnicate\""),
            "unknown command",
        ),
        (
            recipe().replace(
                "FX/llama/base\"\nadapter = [\"FX/llama/adapters/qv_r8\"]\nout = \"out/merged\"",
                "FX/gpt2/base\"\nadapter = [\"FX/llama/adapters/qv_r8\"]\nout = \"out/merged\"",
            ),
            "do not match",
        ),
        ("not toml [".to_string(), "not valid TOML"),
    ] {
        let r = write_recipe(dir.path(), &body);
        let o = run_err(run_args(&r, &[]));
        let line = one_line_error(&o);
        assert!(line.contains(expect), "{expect}: {line}");
        assert!(!dir.path().join("out").exists(), "nothing ran: {expect}");
    }
}

#[test]
fn bundled_example_recipe_is_valid() {
    let out = run_ok(run_args(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/merge-and-check.toml"),
        &["--dry-run"],
    ));
    assert_mentions(&out, &["merged", "check"]);
}

/// Every bundled example runs green out of the box (its check steps included).
#[test]
fn bundled_examples_run_green() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut ran = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "toml") {
            let o = bin()
                .args(run_args(&e.path(), &["--force", "--quiet"]))
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{} exits {:?}: {}",
                e.path().display(),
                o.status.code(),
                String::from_utf8_lossy(&o.stderr)
            );
            ran += 1;
        }
    }
    assert!(ran >= 1, "no example found");
}

/// A recipe given by a relative path: references to earlier outputs resolve to the same place.
#[test]
fn relative_recipe_paths_resolve_once() {
    let stdout = ok_stdout(bin().current_dir(env!("CARGO_MANIFEST_DIR")).args(run_args(
        Path::new("examples/merge-and-check.toml"),
        &["--dry-run", "--json"],
    )));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let base_of_second = v["items"][1]["argv"]
        .as_array()
        .unwrap()
        .iter()
        .skip_while(|a| *a != "--base")
        .nth(1)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        base_of_second.ends_with("target/recipe-out/merged")
            && !base_of_second.contains("examples/examples"),
        "{base_of_second}"
    );
}

/// A `diff` step that fails stops the recipe with status 1 (a check failed, not bad input) and
/// the steps after it do not run.
#[test]
fn a_failing_diff_stops_the_recipe_with_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let r = write_recipe(
        dir.path(),
        &[
            merge_step("merged", "FX/llama/base", QV, "out/merged", ""),
            diff_step("check", "${merged.out}", "FX/llama/base", ""),
            merge_step("after", "${merged.out}", QV, "out/after", ""),
        ]
        .concat(),
    );
    let o = bin().args(run_args(&r, &[])).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_mentions(&err, &["[check] exited with status 1; stopping"]);
    assert!(dir.path().join("out/merged").exists());
    assert!(
        !dir.path().join("out/after").exists(),
        "a step after the failed check ran"
    );
}

/// A merge split in two parts, their finalize, and an unrelated merge; `adapter` is the one
/// the parts merge.
fn parts_recipe(adapter: &str) -> String {
    let part = |name: &str, part: &str| {
        merge_step(
            name,
            "FX/llama/base",
            adapter,
            "out/merged",
            &format!("part = \"{part}\"\n"),
        )
    };
    [
        part("p1", "1/2"),
        part("p2", "2/2"),
        "\n[[step]]\nname = \"joined\"\ncommand = \"finalize\"\nout = \"${p1.out}\"\n".into(),
        merge_step("other", "FX/llama/base", QV, "out/other", ""),
    ]
    .concat()
}

/// The steps a run ran (`[name] (reason) …` lines) and skipped, from its status lines.
fn ran_and_skipped(recipe: &Path) -> (Vec<String>, Vec<String>) {
    let o = bin().args(run_args(recipe, &[])).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    let name = |l: &str| l[1..l.find(']').unwrap()].to_owned();
    let lines = || err.lines().filter(|l| l.starts_with('['));
    (
        lines().filter(|l| l.contains("] (")).map(name).collect(),
        lines()
            .filter(|l| l.ends_with("up to date, skipped"))
            .map(name)
            .collect(),
    )
}

/// Parts of one output and their finalize each keep their own provenance record: a second run
/// skips every step (part 1 was seen as stale on every run when the parts shared one record), and
/// editing the adapter reruns the parts and the finalize, not the merge that does not read it.
#[test]
fn split_merge_steps_and_finalize_rerun_only_when_their_inputs_change() {
    let dir = tempfile::tempdir().unwrap();
    let copy = copy_qv(dir.path());
    let r = write_recipe(dir.path(), &parts_recipe(s(&copy)));
    let all: Vec<String> = ["p1", "p2", "joined", "other"].map(String::from).into();
    assert_eq!(ran_and_skipped(&r), (all.clone(), vec![]));
    let merged = dir.path().join("out/merged");
    let visible = |d: &Path| {
        let names = listing(d);
        assert!(
            !names.iter().any(|n| n.contains("lorakit-part")),
            "{names:?}"
        );
        names
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        visible(&merged),
        ["config.json", "generation_config.json", "model.safetensors"],
        "finalized: no part manifest left"
    );
    let joined = std::fs::read(merged.join("model.safetensors")).unwrap();
    assert_eq!(ran_and_skipped(&r), (vec![], all.clone()));
    assert!(actions(&r, &[]).iter().all(|(a, _)| a == "skip"));

    // A different alpha: the parts and their finalize rerun, the other merge does not.
    let cfg = copy.join("adapter_config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    let alpha = v["lora_alpha"].as_f64().unwrap();
    v["lora_alpha"] = (2.0 * alpha).into();
    std::fs::write(&cfg, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    assert_eq!(
        ran_and_skipped(&r),
        (all[..3].to_vec(), vec!["other".to_string()])
    );
    assert_ne!(
        std::fs::read(merged.join("model.safetensors")).unwrap(),
        joined
    );
    assert_eq!(visible(&merged).len(), 3);
    assert_eq!(ran_and_skipped(&r), (vec![], all));
}

/// A recipe step may merge into a GGUF model (a planning step that read the base as
/// safetensors refused it: "is a GGUF file … not safetensors", before anything ran): merge into
/// the F32 Llama GGUF, unmerge it back, diff against the base; the merged file is the bytes
/// `lorakit merge` writes by hand, and a second run skips both merges.
#[test]
fn recipe_steps_merge_into_a_gguf_model() {
    let dir = tempfile::tempdir().unwrap();
    let r = write_recipe(dir.path(), &recipe_on("FX/gguf/llama_f32.gguf", ".gguf"));
    let plan = run_ok(run_args(&r, &["--dry-run", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(v["items"][0]["action"], "run");
    assert!(v["items"][0]["bytes_written"].is_null());
    let o = bin().args(run_args(&r, &[])).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let by_hand = dir.path().join("by_hand.gguf");
    run_ok(merge_args(
        &fixture("gguf/llama_f32.gguf"),
        &fixture("llama/adapters/qv_r8"),
        &by_hand,
        &[],
    ));
    assert!(
        std::fs::read(dir.path().join("out/merged.gguf")).unwrap()
            == std::fs::read(&by_hand).unwrap(),
        "the recipe's merge is not the command's"
    );
    let again = run_ok(run_args(&r, &["--dry-run", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&again).unwrap();
    // The merges are up to date; a diff writes nothing, so it always runs.
    let actions: Vec<_> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["skip", "skip", "run"]);
}

/// `run --json` prints one object: the plan and every step's report (steps print nothing of
/// their own, whatever their `json`); a step that fails leaves only the error object on stdout,
/// never a step's success report that a parser would read as success.
#[test]
fn run_json_prints_one_object_with_every_step_report_or_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = write_recipe(
        dir.path(),
        &recipe().replacen(
            "\nout = \"out/merged\"\n",
            "\nout = \"out/merged\"\njson = true\n",
            1,
        ),
    );
    let o = bin().args(run_args(&r, &["--json"])).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["operation"].as_str(), v["exit_code"].as_i64()),
        (Some("run"), Some(0))
    );
    assert_eq!(v["items"].as_array().unwrap().len(), 3);
    let ops: Vec<&str> = v["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["merge", "unmerge", "diff"], "{v}");
    assert_eq!(v["reports"][2]["pass"], true);

    // Step 2 fails once step 1 has run and reported (its base is step 1's output, so it is
    // planned only when it runs; its adapter matches nothing there): the error object alone.
    let bad = dir.path().join("bad");
    let body = [
        merge_step(
            "merged",
            "FX/llama/base",
            QV,
            "out2/merged",
            "json = true\n",
        ),
        merge_step(
            "again",
            "${merged.out}",
            "FX/flux_final/kohya.safetensors",
            "out2/x",
            "",
        ),
    ]
    .concat();
    std::fs::create_dir(&bad).unwrap();
    let r = write_recipe(&bad, &body);
    let o = bin().args(run_args(&r, &["--json"])).output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    assert_eq!(v["operation"], "run", "{v}");
    assert_eq!(v["error"]["exit_code"], 2, "{v}");
    assert!(
        bad.join("out2/merged/model.safetensors").exists(),
        "step 1 ran"
    );
}

/// A step's record lists every file of its output folder, so an output folder that holds an
/// input (the recipe's own folder, a parent of the base, `/`) is refused before anything runs.
#[test]
fn an_output_folder_holding_an_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("models/base");
    std::fs::create_dir_all(&base).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("llama/base").join(f), base.join(f)).unwrap();
    }
    let models = dir.path().join("models");
    for (out, input) in [
        (dir.path().display().to_string(), "r.toml".to_string()),
        (models.display().to_string(), base.display().to_string()),
        ("/".to_string(), "r.toml".to_string()),
    ] {
        let r = write_recipe(
            dir.path(),
            &merge_step("m", &base.display().to_string(), QV, &out, ""),
        );
        let o = run_err(run_args(&r, &[]));
        let line = one_line_error(&o);
        assert!(
            line.contains("is a folder that holds an input") && line.contains(&input),
            "{out}: {line}"
        );
        assert!(!models.join("model.safetensors").exists());
        assert!(!dir.path().join("model.safetensors").exists());
        assert!(!Path::new("/model.safetensors").exists());
    }
}

/// Symlinks below an input folder that lead back up (`a -> .`, `b -> .`) are not followed
/// when the recipe records and hashes its inputs: following them would list the folder
/// 2^depth times and never finish.
#[cfg(unix)]
#[test]
fn symlink_loops_in_an_input_folder_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let copy = copy_qv(dir.path());
    std::os::unix::fs::symlink(".", copy.join("a")).unwrap();
    std::os::unix::fs::symlink(".", copy.join("b")).unwrap();
    let r = write_recipe(
        dir.path(),
        &merge_step(
            "m",
            "FX/llama/base",
            &copy.display().to_string(),
            "out/m",
            "",
        ),
    );
    run_ok(run_args(&r, &[]));
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("out/m/.lorakit-step.json")).unwrap(),
    )
    .unwrap();
    let inputs: Vec<&str> = rec["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    // The base's files and the adapter's two, each once.
    assert_eq!(
        inputs.iter().filter(|p| p.contains("/qv/")).count(),
        2,
        "{inputs:?}"
    );
}
