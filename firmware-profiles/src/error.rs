//! The error type for loading and validating profiles.

use std::path::PathBuf;

/// Why a profile could not be loaded. Every variant names the profile (or file) and, where it
/// applies, the offending field, so the message alone is enough to fix the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The text is not valid TOML, or does not have the profile's shape: unknown field, missing
    /// field, wrong type.
    #[error("profile `{profile}`: {message}")]
    Toml {
        /// The profile name or file the text came from.
        profile: String,
        /// The parser's message, prefixed with the line and column where known.
        message: String,
    },

    /// A field is present and well typed but its value is not acceptable.
    #[error("profile `{profile}`: `{field}` {problem}")]
    Invalid {
        /// The profile name or file.
        profile: String,
        /// Dotted TOML path of the field, e.g. `clock.throttled_mhz` or `thermal.steps[1].clock_mhz`.
        field: String,
        /// What is wrong, phrased to follow the field name.
        problem: String,
    },

    /// Numeric fields without any `[[sources]]` entry naming them.
    #[error(
        "profile `{profile}`: no `[[sources]]` entry for {}; every number needs a citation \
         (use `estimate: <reasoning>` when there is no published figure)",
        fields.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
    )]
    MissingSources {
        /// The profile name or file.
        profile: String,
        /// The fields lacking a source, in file order.
        fields: Vec<&'static str>,
    },

    /// A file or directory could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A profile file's `name` differs from its file stem, so `find` by file name would fail.
    #[error("`{}`: profile name `{name}` must equal the file stem `{stem}`", path.display())]
    NameMismatch {
        /// The file.
        path: PathBuf,
        /// The `name` written in the file.
        name: String,
        /// The file stem it should equal.
        stem: String,
    },
}

impl ProfileError {
    /// The dotted field path this error is about, if it concerns a single field.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}
