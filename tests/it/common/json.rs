//! Readers of the JSON reports the binary prints (`--json`): a list's entries, the entry with a
//! given field, the strings of a list, the modules a `check` finding names. Each panics with the report's text where the report lacks
//! what the test reads, so that a failing test shows what it got.

use serde_json::Value;

/// The entries of the JSON list `v`.
#[track_caller]
pub fn entries(v: &Value) -> &[Value] {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .as_slice()
}

/// The first entry of the JSON list `list` whose `key` is the string `value`.
#[track_caller]
pub fn entry<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    entries(list)
        .iter()
        .find(|e| e[key] == value)
        .unwrap_or_else(|| panic!("no entry with {key} = {value:?} in {list}"))
}

/// The strings of the JSON list `v`, in order.
#[track_caller]
pub fn strs(v: &Value) -> Vec<&str> {
    entries(v)
        .iter()
        .map(|x| x.as_str().unwrap_or_else(|| panic!("not a string: {x}")))
        .collect()
}

/// The string `field` of each entry of the JSON list `v`, in order.
#[track_caller]
pub fn field_strs<'a>(v: &'a Value, field: &str) -> Vec<&'a str> {
    entries(v)
        .iter()
        .map(|x| {
            x[field]
                .as_str()
                .unwrap_or_else(|| panic!("no string {field} in {x}"))
        })
        .collect()
}

/// The module each item of the `check` finding `finding` names (the item up to its first
/// space), sorted.
#[track_caller]
pub fn item_modules(finding: &Value) -> Vec<&str> {
    let mut v: Vec<&str> = strs(&finding["items"])
        .into_iter()
        .map(|i| i.split(' ').next().unwrap_or(i))
        .collect();
    v.sort();
    v
}

/// The modules that the `silent` findings of one `check` target report `target` name (each
/// item up to its first " ("): what lorakit says the loader drops without a word.
#[track_caller]
pub fn silent_modules(target: &Value) -> std::collections::BTreeSet<String> {
    entries(&target["findings"])
        .iter()
        .filter(|f| f["severity"] == "silent")
        .flat_map(|f| strs(&f["items"]))
        .map(|i| i.split(" (").next().unwrap_or(i).to_owned())
        .collect()
}

/// The strings of the JSON list `v` as a set (a recorded list of module names).
#[track_caller]
pub fn str_set(v: &Value) -> std::collections::BTreeSet<String> {
    strs(v).into_iter().map(str::to_owned).collect()
}

/// The JSON file at `path` (a config, a manifest, a report written to disk).
#[track_caller]
pub fn read_json(path: impl AsRef<std::path::Path>) -> Value {
    let path = path.as_ref();
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Rewrites the JSON file at `path` (compact) after `edit`.
#[track_caller]
pub fn edit_json(path: impl AsRef<std::path::Path>, edit: impl FnOnce(&mut Value)) {
    let path = path.as_ref();
    let mut v = read_json(path);
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}
