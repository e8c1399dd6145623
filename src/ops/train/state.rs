//! Checkpoints of a run: [`Trainer::save`] writes the adapter and the trainer state as one
//! atomic set of files, [`Trainer::resume`] continues from them exactly (module doc of
//! [`super`]).
//!
//! Must not mix files of two steps: all three record the step, and a folder whose files
//! disagree is refused.

use super::record::{StateFile, TrainedModule, STATE_JSON, STATE_TENSORS};
use super::trainer::Trainer;
use crate::adapter::Adapter;
use crate::dtype::Dtype;
use crate::error::{InputError, Opt};
use crate::io::{Output, SafetensorsFile, TensorSpec};
use anyhow::{bail, Context, Result};
use std::path::Path;

impl Trainer<'_> {
    /// Writes the adapter and the trainer state into `dir` (one atomic set of files).
    pub fn save(&self, dir: &Path, base_model: &str, targets: &[String]) -> Result<()> {
        let adapter = self.adapter(base_model, targets);
        let mut out = Output::new();
        out.create_dir_all(dir)?;
        out.lock(dir, crate::io::writer::LockMode::Exclusive)?;
        let mut meta = crate::ops::output::provenance_head("train").to_vec();
        meta.push(("lorakit.step".to_string(), self.step.to_string()));
        crate::adapter::formats::peft::write(&adapter, dir, &mut out, Dtype::F32, &meta)?;
        let mut specs = Vec::new();
        let mut payload: Vec<&[f32]> = Vec::new();
        for (i, tm) in self.modules.iter().enumerate() {
            let l = self.model.linear(tm.slot).trainable().expect("trainable");
            let (d, k) = (l.b.len() / tm.rank, l.a.len() / tm.rank);
            for (which, shape, m, v) in [
                ("lora_A", vec![tm.rank, k], &self.m[i].0, &self.v[i].0),
                ("lora_B", vec![d, tm.rank], &self.m[i].1, &self.v[i].1),
            ] {
                specs.push(TensorSpec::new(
                    format!("{}.{which}.exp_avg", tm.name),
                    Dtype::F32,
                    shape.clone(),
                ));
                payload.push(m);
                specs.push(TensorSpec::new(
                    format!("{}.{which}.exp_avg_sq", tm.name),
                    Dtype::F32,
                    shape,
                ));
                payload.push(v);
            }
        }
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let mut w = out.safetensors(
            &dir.join(STATE_TENSORS),
            &[("lorakit.step".to_string(), self.step.to_string())],
            specs,
        )?;
        for (n, p) in names.iter().zip(payload) {
            w.write_tensor(n, bytemuck::cast_slice(p))?;
        }
        w.finish()?;
        let state = StateFile {
            lorakit_version: env!("CARGO_PKG_VERSION").into(),
            step: self.step,
            rslora: self.rslora,
            modules: self.modules.clone(),
            options: self.options.clone(),
            data_tokens: self.data.tokens.len(),
            data_fingerprint: self.data.fingerprint(),
            history: self.history.clone(),
            eval: self.eval.clone(),
        };
        let mut text = serde_json::to_vec_pretty(&state)?;
        text.push(b'\n');
        out.small_file(&dir.join(STATE_JSON), &text)?;
        out.commit()?;
        Ok(())
    }

    /// Continues from a folder written by [`Trainer::save`]: factors, moments, step and
    /// history. The modules, ranks, alphas, seed, batch, sequence length and data must be the
    /// same as this run's; the step count, learning rate and schedule may change.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let sp = dir.join(STATE_JSON);
        let text = crate::io::read_json_file(&sp)?;
        let st: StateFile = serde_json::from_slice(&text)
            .map_err(|e| InputError::invalid(&sp, format!("not a lorakit trainer state: {e}")))?;
        let bad = |m: String| anyhow::Error::new(InputError::invalid(&sp, m));
        let names = |v: &[TrainedModule]| -> Vec<(String, usize, String)> {
            v.iter()
                .map(|m| (m.name.clone(), m.rank, format!("{}", m.alpha)))
                .collect()
        };
        if names(&st.modules) != names(&self.modules) || st.rslora != self.rslora {
            bail!(InputError::option(&sp, |o| {
                format!(
                "the saved run trains other modules, ranks or alphas than this one (same {}, {}, {}, {} needed)",
                o.opt(Opt::Targets),
                o.opt(Opt::Rank),
                o.opt(Opt::Alpha),
                o.opt(Opt::Rslora)
            )
            }));
        }
        let o = &self.options;
        let so = &st.options;
        if (so.seed, so.batch, so.seq_len) != (o.seed, o.batch, o.seq_len) {
            let (saved, this) = (
                (so.seed, so.batch, so.seq_len),
                (o.seed, o.batch, o.seq_len),
            );
            bail!(InputError::option(&sp, move |o| {
                let run = |(seed, batch, seq_len): (u64, usize, usize)| {
                    format!(
                        "{} {} {}",
                        o.set(Opt::Seed, seed),
                        o.set(Opt::Batch, batch),
                        o.set(Opt::SeqLen, seq_len)
                    )
                };
                format!("the saved run used {}, this one {}", run(saved), run(this))
            }));
        }
        if st.data_fingerprint != self.data.fingerprint() {
            bail!(bad("the saved run was trained on other data".into()));
        }
        if st.step > o.steps {
            let (step, steps) = (st.step, o.steps);
            bail!(InputError::option(&sp, move |o| format!(
                "the saved run is at step {step}, beyond {}",
                o.set(Opt::Steps, steps)
            )));
        }
        let adapter = Adapter::open(dir)?;
        let moments = SafetensorsFile::open(dir.join(STATE_TENSORS))?;
        // The files are renamed into place one by one: a save interrupted between renames
        // leaves files of two steps, which must not be mixed.
        let step = st.step.to_string();
        let adapter_step = adapter
            .metadata
            .iter()
            .find(|(k, _)| k == "lorakit.step")
            .map(|(_, v)| v.as_str());
        let moments_step = moments.header().metadata_value("lorakit.step");
        if adapter_step != Some(step.as_str()) || moments_step != Some(step.as_str()) {
            bail!(bad(format!(
                "the adapter (step {}), moments (step {}) and state (step {step}) disagree: a save was interrupted; resume from an earlier checkpoint",
                adapter_step.unwrap_or("?"),
                moments_step.unwrap_or("?")
            )));
        }
        for (i, tm) in self.modules.iter().enumerate() {
            let m = adapter
                .module(&tm.name)
                .ok_or_else(|| bad(format!("module `{}` is missing from the adapter", tm.name)))?;
            let (b, a) = adapter.factors(m)?;
            let read = |k: &str| -> Result<Vec<f32>> {
                moments
                    .read_f32(&format!("{}.{k}", tm.name))
                    .with_context(|| format!("{}", dir.display()))
            };
            let (ma, va, mb, vb) = (
                read("lora_A.exp_avg")?,
                read("lora_A.exp_avg_sq")?,
                read("lora_B.exp_avg")?,
                read("lora_B.exp_avg_sq")?,
            );
            let lora = self
                .model
                .linear_mut(tm.slot)
                .trainable_mut()
                .expect("trainable");
            if a.len() != lora.a.len()
                || b.len() != lora.b.len()
                || ma.len() != a.len()
                || mb.len() != b.len()
                || va.len() != a.len()
                || vb.len() != b.len()
            {
                bail!(bad(format!("module `{}`: saved shapes differ", tm.name)));
            }
            // AdamW's state: first moments finite, second moments finite and ≥ 0 (they are
            // running means of squares; a negative one makes √v̂ NaN on the first step).
            for (what, v, second) in [
                ("lora_A.exp_avg", &ma, false),
                ("lora_A.exp_avg_sq", &va, true),
                ("lora_B.exp_avg", &mb, false),
                ("lora_B.exp_avg_sq", &vb, true),
            ] {
                if let Some(i) = v
                    .iter()
                    .position(|x| !x.is_finite() || (second && *x < 0.0))
                {
                    bail!(InputError::invalid(
                        dir.join(STATE_TENSORS),
                        format!(
                            "tensor `{}.{what}`: element {i} is {}, not a valid AdamW {} moment; the state is corrupt",
                            tm.name,
                            v[i],
                            if second { "second" } else { "first" }
                        )
                    ));
                }
            }
            if let Some(x) = a.iter().chain(b.iter()).find(|x| !x.is_finite()) {
                bail!(bad(format!(
                    "module `{}`: a saved factor holds {x}",
                    tm.name
                )));
            }
            lora.a = a.to_vec();
            lora.b = b.to_vec();
            self.m[i] = (ma, mb);
            self.v[i] = (va, vb);
        }
        self.step = st.step;
        self.history = st.history;
        self.eval = st.eval;
        Ok(())
    }
}
