//! `eval` and `train` tests (being written).
