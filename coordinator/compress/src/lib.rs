//! Hone's compression methods.
//!
//! - [`method`]: the one trait, [`CompressionMethod`], through which a pipeline drives every
//!   method: a parent graph and its data in, candidates (graph + method, settings, target
//!   runtime and precision) out.
//! - [`prune`]: dependency-aware structured pruning (groups, importance, allocation, cutting,
//!   side-by-side latency, recovery fine-tune, the `--target-speedup` search).
//! - [`distill`]: knowledge distillation (students made from the teacher or given, forward,
//!   reverse and skew KL, hidden-state, attention and attribution losses, teacher assistants).
//! - [`predict`]: latency prediction per device class from the fleet's measurements, to rank
//!   candidates before they are measured.

/// `Display`, `FromStr` and the list of names of a settings enum, spelled as in its serde form
/// and on the command line.
#[macro_export]
#[doc(hidden)]
macro_rules! named_enum {
    ($ty:ident, $what:literal { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value's name.
            pub const NAMES: &'static [&'static str] = &[$($name),+];
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self { $($ty::$variant => $name),+ })
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    other => Err(format!(
                        "unknown {} `{other}`: {}",
                        $what,
                        $ty::NAMES.join(", ")
                    )),
                }
            }
        }
    };
}

/// The CPU's model name (from `/proc/cpuinfo`; the architecture where there is none), named
/// beside every figure.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

pub mod distill;
pub mod method;
pub mod predict;
pub mod prune;
pub mod ptq;

pub use method::{
    Candidate, CompressionMethod, DistillMethod, MethodContext, Precision, PruneGrid, PruneMethod,
    PruneSettings, Runtime, Target, method,
};
