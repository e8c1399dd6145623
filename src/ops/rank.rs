//! How many singular triplets a module keeps: the one rank rule of `extract` (from the
//! spectrum of `W − W0`) and `resize` (from the spectrum of `s·B·A`), with one validation, one
//! choice and one JSON form.
//!
//! Rules: a fixed rank; the smallest rank keeping a fraction of `‖ΔW‖_F²`
//! ([`linalg::rank_for_energy`]'s rule, with the total given exactly, since a randomized SVD
//! returns only the leading values); kohya `resize_lora.py`'s `sv_ratio` (keep `σᵢ > σ₁/ratio`,
//! [`linalg::rank_for_sv_ratio`]). The dynamic rules take an optional maximum rank.
//!
//! Must not be re-implemented elsewhere: extract and resize both choose ranks here.

use crate::linalg;

/// How many triplets each module keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RankRule {
    /// The same rank for every module, capped at what the module has (`min(d, k)` for an
    /// extraction, its own rank for a resize, as kohya does).
    Fixed(usize),
    /// The smallest rank whose leading triplets hold a fraction `≥ energy` of `‖ΔW‖_F²`
    /// (`0 < energy ≤ 1`), at most `max_rank`. Singular values are f32 (their energies are off
    /// by ~`10⁻⁷` relative), so a threshold that close to a cumulative energy, `energy = 1`
    /// included, is decided by rounding; use e.g. `1 − 10⁻⁶` for "all but rounding noise".
    Energy {
        energy: f64,
        max_rank: Option<usize>,
    },
    /// kohya's `sv_ratio` (`≥ 1`): keep the singular values `> σ₁/ratio`, at most `max_rank`.
    SvRatio { ratio: f64, max_rank: Option<usize> },
}

/// Which parameter of a [`RankRule`] is out of range (the CLI names its flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankParam {
    Rank,
    Energy,
    SvRatio,
    MaxRank,
}

impl std::fmt::Display for RankParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RankParam::Rank => "rank",
            RankParam::Energy => "energy",
            RankParam::SvRatio => "sv_ratio",
            RankParam::MaxRank => "max_rank",
        })
    }
}

/// A rank rule parameter out of range: `param`, then `problem` ("energy 1.5 must be in (0, 1]").
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{param} {problem}")]
pub struct RankRuleError {
    pub param: RankParam,
    /// The value and what it must be, e.g. `1.5 must be in (0, 1]`, `must be at least 1`.
    pub problem: String,
}

impl RankRule {
    /// Checks every parameter: ranks ≥ 1, `energy` in (0, 1], `ratio` finite and ≥ 1 (below 1
    /// no singular value passes `σ > σ₁/ratio`).
    pub fn validate(&self) -> Result<(), RankRuleError> {
        let err = |param, problem: String| Err(RankRuleError { param, problem });
        let max_rank = match *self {
            RankRule::Fixed(0) => return err(RankParam::Rank, "must be at least 1".into()),
            RankRule::Fixed(_) => None,
            RankRule::Energy { energy, max_rank } => {
                if !(energy > 0.0 && energy <= 1.0) {
                    return err(RankParam::Energy, format!("{energy} must be in (0, 1]"));
                }
                max_rank
            }
            RankRule::SvRatio { ratio, max_rank } => {
                if !(ratio >= 1.0 && ratio.is_finite()) {
                    return err(
                        RankParam::SvRatio,
                        format!("{ratio} must be a finite number ≥ 1"),
                    );
                }
                max_rank
            }
        };
        if max_rank == Some(0) {
            return err(RankParam::MaxRank, "must be at least 1".into());
        }
        Ok(())
    }

    /// The largest rank the rule can pick (`usize::MAX` for an uncapped dynamic rule).
    pub fn cap(&self) -> usize {
        match *self {
            RankRule::Fixed(r) => r,
            RankRule::Energy { max_rank, .. } | RankRule::SvRatio { max_rank, .. } => {
                max_rank.unwrap_or(usize::MAX)
            }
        }
    }

    /// The rank the rule picks from the leading singular values `s` (non-increasing) of a
    /// matrix with `‖M‖_F² = norm_sq`, when at most `limit` triplets exist (the module's rank, or
    /// `min(d, k)`). At least 1 and at most `min(limit, cap, s.len())`; 0 only for an empty `s`.
    ///
    /// `Energy`: the smallest `k` with `Σ_{i<k} sᵢ² ≥ (energy − 10⁻¹²)·norm_sq` (the slack of
    /// [`linalg::ENERGY_RTOL`] only absorbs summation rounding), or all available values when
    /// they do not reach it. `SvRatio`: [`linalg::rank_for_sv_ratio`]. A zero matrix keeps 1.
    pub fn choose(&self, s: &[f32], norm_sq: f64, limit: usize) -> usize {
        let n = s.len().min(self.cap()).min(limit);
        if n == 0 {
            return 0;
        }
        let k = match *self {
            RankRule::Fixed(r) => r,
            RankRule::Energy { energy, .. } => {
                let target = (energy.min(1.0) - linalg::ENERGY_RTOL) * norm_sq;
                let mut cum = 0.0f64;
                let mut k = n;
                for (i, &x) in s[..n].iter().enumerate() {
                    cum += (x as f64) * (x as f64);
                    if cum >= target {
                        k = i + 1;
                        break;
                    }
                }
                k
            }
            RankRule::SvRatio { ratio, .. } => linalg::rank_for_sv_ratio(s, ratio),
        };
        k.clamp(1, n)
    }
}

/// Reports and provenance spell a rule as `{"rule": "rank", "rank": R}`,
/// `{"rule": "energy", "energy": E, "max_rank": R|null}` or
/// `{"rule": "sv_ratio", "sv_ratio": X, "max_rank": R|null}`.
impl serde::Serialize for RankRule {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        #[serde(tag = "rule", rename_all = "snake_case")]
        enum Spelled {
            Rank {
                rank: usize,
            },
            Energy {
                energy: f64,
                max_rank: Option<usize>,
            },
            SvRatio {
                sv_ratio: f64,
                max_rank: Option<usize>,
            },
        }
        match *self {
            RankRule::Fixed(rank) => Spelled::Rank { rank },
            RankRule::Energy { energy, max_rank } => Spelled::Energy { energy, max_rank },
            RankRule::SvRatio { ratio, max_rank } => Spelled::SvRatio {
                sv_ratio: ratio,
                max_rank,
            },
        }
        .serialize(ser)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_parameter() {
        let bad = [
            (RankRule::Fixed(0), RankParam::Rank),
            (
                RankRule::Energy {
                    energy: 0.0,
                    max_rank: None,
                },
                RankParam::Energy,
            ),
            (
                RankRule::Energy {
                    energy: 1.5,
                    max_rank: Some(4),
                },
                RankParam::Energy,
            ),
            (
                RankRule::SvRatio {
                    ratio: 0.5,
                    max_rank: None,
                },
                RankParam::SvRatio,
            ),
            (
                RankRule::SvRatio {
                    ratio: f64::INFINITY,
                    max_rank: None,
                },
                RankParam::SvRatio,
            ),
            (
                RankRule::Energy {
                    energy: 0.9,
                    max_rank: Some(0),
                },
                RankParam::MaxRank,
            ),
        ];
        for (rule, param) in bad {
            assert_eq!(rule.validate().unwrap_err().param, param, "{rule:?}");
        }
        assert!(RankRule::SvRatio {
            ratio: 1.0,
            max_rank: Some(3)
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn choice_is_capped_by_the_rule_the_module_and_the_values() {
        // Energies 64, 16, 4, 1 of 85.
        let s = [8.0f32, 4.0, 2.0, 1.0];
        let e = |energy, max_rank| RankRule::Energy { energy, max_rank };
        assert_eq!(e(64.0 / 85.0, None).choose(&s, 85.0, 4), 1);
        assert_eq!(e(80.0 / 85.0, None).choose(&s, 85.0, 4), 2);
        assert_eq!(e(1.0, None).choose(&s, 85.0, 4), 4);
        assert_eq!(e(1.0, Some(2)).choose(&s, 85.0, 4), 2);
        assert_eq!(e(1.0, None).choose(&s, 85.0, 3), 3);
        // The total is given, not summed from `s`: leading values that fall short take them all.
        assert_eq!(e(0.99, None).choose(&s[..2], 85.0, 4), 2);
        assert_eq!(RankRule::Fixed(9).choose(&s, 85.0, 4), 4);
        assert_eq!(RankRule::Fixed(2).choose(&s, 85.0, 4), 2);
        let sv = |ratio, max_rank| RankRule::SvRatio { ratio, max_rank };
        assert_eq!(sv(2.0, None).choose(&s, 85.0, 4), 1);
        assert_eq!(sv(2.001, None).choose(&s, 85.0, 4), 2);
        assert_eq!(sv(100.0, Some(3)).choose(&s, 85.0, 4), 3);
        assert_eq!(e(0.5, None).choose(&[0.0, 0.0], 0.0, 2), 1);
        assert_eq!(RankRule::Fixed(3).choose(&[], 0.0, 4), 0);
        // A threshold hit exactly counts as reached: s² = 16, 16, 16, 4 of a total 64.
        let s = [4.0f32, 4.0, 4.0, 2.0];
        assert_eq!(e(0.75, Some(10)).choose(&s, 64.0, 4), 3);
        assert_eq!(e(0.7501, Some(10)).choose(&s, 64.0, 4), 4);
        assert_eq!(e(0.7499, Some(10)).choose(&s, 64.0, 4), 3);
        assert_eq!(sv(2.0, Some(10)).choose(&s, 64.0, 4), 3);
        assert_eq!(sv(2.0, Some(1)).choose(&s, 64.0, 4), 1);
        // Resize's rule on a module's whole spectrum (kohya sv_ratio: keep σ > 4/3 → 2).
        let s = [4.0f32, 2.0, 1.0, 0.5];
        let total = 21.25;
        assert_eq!(e(0.75, None).choose(&s, total, 4), 1);
        assert_eq!(e(0.76, None).choose(&s, total, 4), 2);
        assert_eq!(sv(3.0, None).choose(&s, total, 4), 2);
    }

    #[test]
    fn json_spelling() {
        let j = |r: RankRule| serde_json::to_string(&r).unwrap();
        assert_eq!(j(RankRule::Fixed(8)), r#"{"rule":"rank","rank":8}"#);
        assert_eq!(
            j(RankRule::Energy {
                energy: 0.9,
                max_rank: None
            }),
            r#"{"rule":"energy","energy":0.9,"max_rank":null}"#
        );
        assert_eq!(
            j(RankRule::SvRatio {
                ratio: 2.0,
                max_rank: Some(16)
            }),
            r#"{"rule":"sv_ratio","sv_ratio":2.0,"max_rank":16}"#
        );
    }
}
