//! The model-card keys (`general.name`, `.organization`, `.basename`, `.finetune`,
//! `.version`, `.size_label`) llama.cpp's `convert_hf_to_gguf.py` derives from a model's id.
//!
//! Ported from gguf-py `metadata.py` of the llama.cpp tree vendored by llama-cpp-python
//! 0.3.36: `Metadata.get_model_id_components` (the name split on `-` and each part annotated
//! as version, quantization type, size, finetune or basename by its regular expressions),
//! `Metadata.id_to_title`, `apply_metadata_heuristic` (config.json's `_name_or_path` when it
//! has at most one `/`, then the folder's name, each filling only what is still unset) and
//! `utility.py` (`size_label`, `model_weight_count_rounded_notation`).
//!
//! Not read, unlike the script: the model card (README.md's YAML header: license, tags,
//! datasets, base models, …) and `--metadata` overrides; [`super::hparams`] refuses a folder
//! with a README.md front matter rather than write different keys. `\d` is ASCII here (Python's
//! is any Unicode decimal digit). Must not read files.

/// The components of a model id, as `get_model_id_components` returns them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IdComponents {
    pub name: Option<String>,
    pub organization: Option<String>,
    pub basename: Option<String>,
    pub finetune: Option<String>,
    pub version: Option<String>,
    pub size_label: Option<String>,
}

impl IdComponents {
    /// Fills what is unset from `other` (`apply_metadata_heuristic`'s `if metadata.x is None`).
    pub fn fill(&mut self, other: IdComponents) {
        let IdComponents {
            name,
            organization,
            basename,
            finetune,
            version,
            size_label,
        } = other;
        self.name = self.name.take().or(name.map(|n| id_to_title(&n)));
        self.organization = self
            .organization
            .take()
            .or(organization.map(|o| id_to_title(&o)));
        self.basename = self.basename.take().or(basename);
        self.finetune = self.finetune.take().or(finetune);
        self.version = self.version.take().or(version);
        self.size_label = self.size_label.take().or(size_label);
    }
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `(v|iter)?\d+([.]\d+)*`, case-insensitive, whole string.
fn is_version(p: &str) -> bool {
    let l = p.to_ascii_lowercase();
    let rest = l
        .strip_prefix("iter")
        .or_else(|| l.strip_prefix('v'))
        .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(&l);
    rest.split('.').all(digits)
}

/// `i?q\d(_\w)*|b?fp?(16|32)`, case-insensitive, whole string.
fn is_quant_type(p: &str) -> bool {
    let l = p.to_lowercase();
    let q = l.strip_prefix('i').unwrap_or(&l);
    if let Some(r) = q.strip_prefix('q') {
        let mut cs = r.chars();
        if cs.next().is_some_and(|c| c.is_ascii_digit()) {
            let rest: Vec<char> = cs.collect();
            return rest.len().is_multiple_of(2)
                && rest
                    .chunks(2)
                    .all(|c| c[0] == '_' && (c[1].is_alphanumeric() || c[1] == '_'));
        }
    }
    let f = l.strip_prefix('b').unwrap_or(&l);
    let Some(f) = f.strip_prefix('f') else {
        return false;
    };
    let f = f.strip_prefix('p').unwrap_or(f);
    f == "16" || f == "32"
}

/// `(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)`, case-insensitive,
/// whole string.
fn is_size(p: &str) -> bool {
    let l = p.to_ascii_lowercase();
    if ["small", "mini", "medium", "large", "xl", "xxl"].contains(&l.as_str()) {
        return true;
    }
    let b = l.as_bytes();
    // Optional trailing digit after the suffix, then the suffix.
    let ends = |end: usize| -> bool {
        if end == 0 || !b"kmbt".contains(&b[end - 1]) {
            return false;
        }
        let body = &l[..end - 1];
        // body = ([a]|\d+x)? \d+ ([._]\d+)?
        let candidates: Vec<&str> = {
            let mut v = vec![body];
            if let Some(r) = body.strip_prefix('a') {
                v.push(r);
            }
            if let Some((n, r)) = body.split_once('x') {
                if digits(n) {
                    v.push(r);
                }
            }
            v
        };
        candidates.iter().any(|c| match c.split_once(['.', '_']) {
            Some((x, y)) => digits(x) && digits(y),
            None => digits(c),
        })
    };
    ends(b.len()) || (b.last().is_some_and(u8::is_ascii_digit) && ends(b.len() - 1))
}

/// `Metadata.get_model_id_components(model_id, total_params)`.
pub fn components(model_id: &str, total_params: i64) -> IdComponents {
    if model_id.contains(' ') {
        return IdComponents {
            name: Some(model_id.to_owned()),
            ..Default::default()
        };
    }
    let (org, full) = match model_id.split_once('/') {
        Some((o, f)) => (Some(o).filter(|o| !o.starts_with('.')), f),
        None => (None, model_id),
    };
    let mut parts: Vec<String> = full
        .split('-')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    #[derive(Default, Clone)]
    struct T {
        basename: bool,
        size: bool,
        finetune: bool,
        version: bool,
        ty: bool,
    }
    impl T {
        fn empty(&self) -> bool {
            !(self.basename || self.size || self.finetune || self.version || self.ty)
        }
        fn count(&self) -> usize {
            [
                self.basename,
                self.size,
                self.finetune,
                self.version,
                self.ty,
            ]
            .iter()
            .filter(|&&b| b)
            .count()
        }
    }
    let mut types = vec![T::default(); parts.len()];
    for (i, part) in parts.iter_mut().enumerate() {
        let t = &mut types[i];
        if is_version(part) {
            t.version = true;
        } else if is_quant_type(part) {
            t.ty = true;
            *part = part.to_uppercase();
        } else if i > 0 && is_size(part) {
            let mut p: Vec<char> = part.replace('_', ".").chars().collect();
            let n = p.len();
            if p[n - 1].is_ascii_digit() {
                // bloom-7b1 → 7.1b
                let (last, suffix) = (p[n - 1], p[n - 2]);
                p.truncate(n - 2);
                p.extend(['.', last, suffix]);
            }
            let n = p.len();
            if n > 1 && p[n - 2].is_ascii_digit() && "kmbt".contains(p[n - 1]) {
                p[n - 1] = p[n - 1].to_ascii_uppercase();
            }
            if total_params != 0 {
                let num: String = p[..p.len() - 1].iter().collect();
                let exp = " KMBT".find(p[p.len() - 1]).map_or(-1, |e| e as i32);
                if let Some(v) = py_float(&num) {
                    let label = v * 1000f64.powi(exp);
                    let tp = total_params as f64;
                    let context = (total_params < 0 && label < (total_params.abs() / 8) as f64)
                        || (total_params > 0
                            && (label - tp).abs() > (7 * total_params).div_euclid(8) as f64);
                    if context {
                        t.finetune = true;
                        let n = p.len();
                        p[n - 1] = p[n - 1].to_ascii_lowercase();
                    }
                }
            }
            if t.empty() {
                t.size = true;
            }
            *part = p.into_iter().collect();
        } else if i > 0
            && ["chat", "instruct", "vision", "lora"].contains(&part.to_lowercase().as_str())
        {
            if total_params < 0 && part.eq_ignore_ascii_case("lora") {
                t.ty = true;
            } else {
                t.finetune = true;
            }
        }
    }
    let numeric_size = parts
        .iter()
        .zip(&types)
        .any(|(p, t)| t.size && p.chars().any(|c| c.is_ascii_digit()));
    if numeric_size {
        for (p, t) in parts.iter().zip(types.iter_mut()) {
            if t.size && p.chars().all(char::is_alphabetic) {
                t.size = false;
            }
        }
    }
    let mut at_start = true;
    for (p, t) in parts.iter().zip(types.iter_mut()) {
        if at_start && ((t.empty() && p.starts_with(char::is_alphabetic)) || t.version) {
            t.basename = true;
        } else {
            at_start = false;
            if t.empty() {
                t.finetune = true;
            }
        }
    }
    for t in types.iter_mut().rev() {
        if t.basename && t.count() > 1 {
            t.basename = false;
        } else {
            break;
        }
    }
    let join = |f: &dyn Fn(&T) -> bool| {
        let v: Vec<&str> = parts
            .iter()
            .zip(&types)
            .filter(|(_, t)| f(t))
            .map(|(p, _)| p.as_str())
            .collect();
        Some(v.join("-")).filter(|s| !s.is_empty())
    };
    let mut sizes: Vec<&str> = Vec::new();
    for (p, t) in parts.iter().zip(&types) {
        if t.size && !sizes.contains(&p.as_str()) {
            sizes.push(p);
        }
    }
    let size_label = Some(sizes.join("-")).filter(|s| !s.is_empty());
    let finetune = join(&|t| t.finetune);
    let version = join(&|t| t.version && !t.basename);
    let mut basename = join(&|t| t.basename);
    if size_label.is_none() && finetune.is_none() && version.is_none() {
        basename = None;
    }
    IdComponents {
        name: Some(full.to_owned()),
        organization: org.map(str::to_owned),
        basename,
        finetune,
        version,
        size_label,
    }
}

/// Python's `float(s)` for the plain decimals a size part holds (`7`, `0.5`), `None` otherwise.
fn py_float(s: &str) -> Option<f64> {
    let ok = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && s.bytes().filter(|&b| b == b'.').count() <= 1
        && s != ".";
    ok.then(|| s.parse().ok()).flatten()
}

/// `Metadata.id_to_title`: `-` to spaces, lowercase words title-cased unless they look like a
/// version (`v1.2`) or start with a digit.
pub fn id_to_title(s: &str) -> String {
    s.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let lower = w.chars().any(char::is_alphabetic)
                && !w.chars().any(|c| c.is_alphabetic() && !c.is_lowercase());
            let version = w.starts_with(|c: char| c.is_ascii_digit())
                || (w.starts_with('v')
                    && w.len() > 1
                    && w[1..]
                        .split('.')
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())));
            if lower && !version {
                // str.title(): a letter after a non-letter is upper case, others lower.
                let mut prev = false;
                w.chars()
                    .map(|c| {
                        let up = !prev;
                        prev = c.is_alphabetic();
                        if up {
                            c.to_uppercase().collect::<String>()
                        } else {
                            c.to_lowercase().collect()
                        }
                    })
                    .collect()
            } else {
                w.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `size_label` of a model without experts: `model_weight_count_rounded_notation(n, 2)`.
pub fn size_label(n: u64) -> String {
    let n = n as f64;
    let (x, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    // Python's round() is round-half-even; str() of the int, leading zeros stripped.
    let digits = format!("{}", x.round_ties_even() as u64);
    let digits = digits.trim_start_matches('0').len();
    let fix = 2usize.saturating_sub(digits);
    format!("{x:.fix$}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by gguf-py's own `Metadata.id_to_title` and
    /// `model_weight_count_rounded_notation` (the llama.cpp tree of llama-cpp-python 0.3.36).
    #[test]
    fn titles_and_size_labels_follow_gguf_py() {
        assert_eq!(id_to_title("tiny-llama"), "Tiny Llama");
        assert_eq!(id_to_title("Llama-2-7b-hf"), "Llama 2 7b Hf");
        assert_eq!(id_to_title("mistral-v0.3"), "Mistral v0.3");
        assert_eq!(size_label(90_432), "90K");
        assert_eq!(size_label(6_738_415_616), "6.7B");
        assert_eq!(size_label(400), "0.40K");
    }

    /// `Metadata.get_model_id_components(id, total_params)` as gguf-py printed it (the
    /// llama.cpp tree of llama-cpp-python 0.3.36): (name, organization, basename, finetune,
    /// version, size_label).
    #[test]
    fn id_components_follow_gguf_py() {
        type Row<'a> = (&'a str, i64, [Option<&'a str>; 6]);
        let rows: &[Row] = &[
            (
                "Qwen2-0.5B-lora",
                23000,
                [
                    Some("Qwen2-0.5B-lora"),
                    None,
                    Some("Qwen2"),
                    Some("0.5b-lora"),
                    None,
                    None,
                ],
            ),
            (
                "Tiny-Llama-3-8B-Instruct-v0.1",
                90432,
                [
                    Some("Tiny-Llama-3-8B-Instruct-v0.1"),
                    None,
                    Some("Tiny-Llama-3"),
                    Some("8b-Instruct"),
                    Some("v0.1"),
                    None,
                ],
            ),
            (
                "meta-llama/Llama-2-7b-chat-hf",
                6738415616,
                [
                    Some("Llama-2-7b-chat-hf"),
                    Some("meta-llama"),
                    Some("Llama-2"),
                    Some("chat-hf"),
                    None,
                    Some("7B"),
                ],
            ),
            (
                "bloom-7b1",
                7069016064,
                [
                    Some("bloom-7b1"),
                    None,
                    Some("bloom"),
                    None,
                    None,
                    Some("7.1B"),
                ],
            ),
            (
                "Mixtral-8x7B-Instruct-v0.1",
                46702792704,
                [
                    Some("Mixtral-8x7B-Instruct-v0.1"),
                    None,
                    Some("Mixtral"),
                    Some("Instruct"),
                    Some("v0.1"),
                    Some("8x7B"),
                ],
            ),
            (
                "mistralai/Mistral-7B-v0.3",
                7248023552,
                [
                    Some("Mistral-7B-v0.3"),
                    Some("mistralai"),
                    Some("Mistral"),
                    None,
                    Some("v0.3"),
                    Some("7B"),
                ],
            ),
            (
                "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M",
                1543714304,
                [
                    Some("Qwen2.5-Coder-1.5B-Instruct-Q4_K_M"),
                    None,
                    Some("Qwen2.5-Coder"),
                    Some("Instruct"),
                    None,
                    Some("1.5B"),
                ],
            ),
            (
                "tiny-llama",
                90432,
                [Some("tiny-llama"), None, None, None, None, None],
            ),
            (
                "phi-3-mini-128k-instruct",
                3821079552,
                [
                    Some("phi-3-mini-128k-instruct"),
                    None,
                    Some("phi-3"),
                    Some("128k-instruct"),
                    None,
                    Some("mini"),
                ],
            ),
            (
                "gpt2-xl",
                1557611200,
                [Some("gpt2-xl"), None, Some("gpt2"), None, None, Some("xl")],
            ),
            (
                "some model name",
                10,
                [Some("some model name"), None, None, None, None, None],
            ),
            (
                "./x/Llama-3-8B",
                8030261248,
                [
                    Some("x/Llama-3-8B"),
                    None,
                    Some("x/Llama-3"),
                    None,
                    None,
                    Some("8B"),
                ],
            ),
            (
                "SmolLM2-135M-Instruct",
                134515008,
                [
                    Some("SmolLM2-135M-Instruct"),
                    None,
                    Some("SmolLM2"),
                    Some("Instruct"),
                    None,
                    Some("135M"),
                ],
            ),
            (
                "Llama-3.1-8B",
                100,
                [
                    Some("Llama-3.1-8B"),
                    None,
                    Some("Llama-3.1"),
                    Some("8b"),
                    None,
                    None,
                ],
            ),
        ];
        for (id, n, want) in rows {
            let c = components(id, *n);
            let got = [
                &c.name,
                &c.organization,
                &c.basename,
                &c.finetune,
                &c.version,
                &c.size_label,
            ]
            .map(|v| v.as_deref());
            assert_eq!(&got, want, "{id}");
        }
    }
}
