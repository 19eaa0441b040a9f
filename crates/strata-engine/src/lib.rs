//! `strata-engine`: the VFP model, pure and deterministic.
pub mod classifier;
pub mod condition;
