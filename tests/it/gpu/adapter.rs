//! Which adapter runs: `gpu-info`, `--gpu-index N` and `pci:ID`, `--device auto` never on a
//! software adapter, and a clear error where no Vulkan driver exists.

use super::*;

#[test]
fn gpu_info_describes_the_adapter() {
    if !gpu_available() {
        return;
    }
    let s = run_ok(["gpu-info", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert!(
        v["limits"]["max_storage_buffer_binding_size"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(!v["name"].as_str().unwrap().is_empty());
}

/// lorakit with the Vulkan loader pointed at no driver at all.
fn without_vulkan_driver() -> std::process::Command {
    let mut cmd = bin();
    cmd.env("VK_ICD_FILENAMES", "/nonexistent.json")
        .env("VK_DRIVER_FILES", "/nonexistent.json")
        .env("WGPU_BACKEND", "vulkan");
    cmd
}

#[test]
fn device_gpu_without_adapter_is_a_clear_error() {
    let out = without_vulkan_driver().args(["gpu-info"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.to_lowercase().contains("adapter"),
        "{err}"
    );
    // auto falls back to the CPU.
    let (_dir, o) = scratch("o.safetensors");
    let stdout = ok_stdout(without_vulkan_driver().args(merge_fixtures_args(
        "llama/base/model.safetensors",
        "llama/adapters/qv_r8",
        &o,
        &["--json"],
    )));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(v["device"].as_str().unwrap().starts_with("cpu"));
}

/// `gpu-info --json` and its list of adapters.
fn listed_adapters() -> (serde_json::Value, Vec<serde_json::Value>) {
    let info: serde_json::Value = serde_json::from_str(&run_ok(["gpu-info", "--json"])).unwrap();
    let adapters = info["adapters"].as_array().unwrap().clone();
    (info, adapters)
}

/// `--gpu-index N`: `gpu-info --json` lists every adapter with its index, each index opens the
/// adapter listed under it, a merge runs on the one chosen, and an index past the list is a
/// one-line error that writes nothing.
#[test]
fn gpu_index_picks_the_listed_adapter() {
    if !gpu_available() {
        return;
    }
    let (info, adapters) = listed_adapters();
    assert!(!adapters.is_empty(), "{info}");
    for a in &adapters {
        let i = a["index"].as_u64().unwrap().to_string();
        let one: serde_json::Value =
            serde_json::from_str(&run_ok(["gpu-info", "--json", "--gpu-index", &i])).unwrap();
        assert_eq!(one["name"], a["name"], "index {i}");
    }
    let dir = tempfile::tempdir().unwrap();
    let v: serde_json::Value = serde_json::from_str(&merge_qv_r8(
        &dir.path().join("ok"),
        &["--device", "gpu", "--gpu-index", "0", "--json"],
    ))
    .unwrap();
    let device = v["device"].as_str().unwrap();
    assert!(
        device.contains(adapters[0]["name"].as_str().unwrap()),
        "{device}"
    );
    let past = adapters.len().to_string();
    let out = dir.path().join("bad");
    let err = merge_on_gpu_index(&out, &past);
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(
        stderr.starts_with("error: ")
            && stderr.trim_end().lines().count() == 1
            && stderr.contains(&format!("index {past}")),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// A merge of the llama fixture into `out` on the GPU `--gpu-index` names; expected to fail.
fn merge_on_gpu_index(out: &std::path::Path, selector: &str) -> std::process::Output {
    let (base, adapter) = (fixture("llama/base"), fixture("llama/adapters/qv_r8"));
    let (base, adapter) = (s(&base), s(&adapter));
    let out = s(out);
    let args = [
        "--base",
        base,
        "--adapter",
        adapter,
        "--out",
        out,
        "--gpu-index",
        selector,
    ];
    run_err(["merge", "--device", "gpu"].into_iter().chain(args))
}

/// `--gpu-index pci:ID`: `gpu-info --json` lists each adapter's bus id (empty where the driver
/// reports none, as lavapipe); an adapter that reports one opens by it, and a bus id no adapter
/// has is a one-line error naming the ids there are, with nothing written.
#[test]
fn gpu_index_takes_a_pci_bus_id() {
    if !gpu_available() {
        return;
    }
    let (_, adapters) = listed_adapters();
    let absent = "0000:fe:1f.7";
    for a in &adapters {
        let id = a["pci_bus_id"].as_str().unwrap();
        if id.is_empty() {
            continue;
        }
        assert_ne!(id, absent, "an adapter sits at {absent}");
        let one: serde_json::Value = serde_json::from_str(&run_ok([
            "gpu-info",
            "--json",
            "--gpu-index",
            &format!("pci:{id}"),
        ]))
        .unwrap();
        assert_eq!(one["pci_bus_id"], a["pci_bus_id"], "{id}");
    }
    let (_dir, out) = scratch("bad");
    let err = merge_on_gpu_index(&out, &format!("pci:{absent}"));
    let stderr = String::from_utf8_lossy(&err.stderr);
    let first = adapters[0]["pci_bus_id"].as_str().unwrap();
    let first = if first.is_empty() {
        "none reported"
    } else {
        first
    };
    assert!(
        stderr.starts_with("error: ")
            && stderr.trim_end().lines().count() == 1
            && stderr.contains(&format!("no adapter at PCI bus id {absent}"))
            && stderr.contains(&format!("[0] {first}")),
        "{stderr}"
    );
    assert!(!out.exists());
    let err = run_err(["gpu-info", "--gpu-index", "pci:65:00"]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("not a PCI bus id"));
}

/// `--device auto` (the default) uses the adapter only when it is a hardware GPU: a software
/// one (lavapipe, SwiftShader: wgpu's device type `Cpu`) is slower than the CPU path. In CI the
/// only adapter is lavapipe, so there auto must report the CPU.
#[test]
fn device_auto_never_picks_a_software_adapter() {
    if !gpu_available() {
        return;
    }
    let info: serde_json::Value = serde_json::from_str(&run_ok(["gpu-info", "--json"])).unwrap();
    let software = info["device_type"] == "Cpu";
    let dir = tempfile::tempdir().unwrap();
    for (i, extra) in [&[][..], &["--device", "auto"]].iter().enumerate() {
        let mut flags = vec!["--json"];
        flags.extend_from_slice(extra);
        let v: serde_json::Value =
            serde_json::from_str(&merge_qv_r8(&dir.path().join(format!("{i}")), &flags)).unwrap();
        let device = v["device"].as_str().unwrap();
        let want = if software { "cpu" } else { "gpu" };
        assert!(
            device.starts_with(want),
            "{extra:?} with a {} adapter ({}): merged on {device}",
            info["device_type"],
            info["name"]
        );
    }
    // Asked for by name, the software adapter is used.
    if software {
        let v: serde_json::Value = serde_json::from_str(&merge_qv_r8(
            &dir.path().join("g"),
            &["--device", "gpu", "--json"],
        ))
        .unwrap();
        assert!(v["device"].as_str().unwrap().starts_with("gpu"));
    }
}
