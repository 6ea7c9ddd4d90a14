//! Device profiles as data.
//!
//! Each edge device Hone can emulate or target is described by one TOML file in
//! `firmware-profiles/profiles/`. A file is parsed into a [`RawProfile`] (which mirrors the
//! TOML exactly and rejects unknown keys), then validated into a typed [`DeviceProfile`];
//! anything wrong comes back as a [`ProfileError`] naming the profile, the field and the
//! problem.
//!
//! The shipped profiles are compiled in ([`builtin`], [`find`]); users can add their own with
//! [`parse`] or [`load_dir`]. Every numeric field must be backed by a `[[sources]]` entry, so
//! the numbers stay auditable.
//!
//! ```
//! let pi = hone_firmware_profiles::find("rpi4").expect("rpi4 is built in");
//! assert_eq!(pi.cores, 4);
//! assert!(pi.clock.throttled_mhz < pi.clock.nominal_mhz);
//! println!("{}", pi.summary());
//! ```

#![warn(missing_docs)]

mod error;
mod profile;
pub mod raw;

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::sync::OnceLock;

pub use error::ProfileError;
pub use profile::{Arch, Clock, DeviceProfile, IsaFeature, Power, Source, Thermal, ThermalStep};
pub use raw::RawProfile;

/// Lists the shipped profile files by stem; each is compiled in from `profiles/<stem>.toml`.
macro_rules! builtin_files {
    ($($stem:literal),+ $(,)?) => {
        &[$(($stem, include_str!(concat!("../profiles/", $stem, ".toml")))),+]
    };
}

/// The one list of shipped profiles: `(file stem, file contents)`. Adding a file to
/// `profiles/` without adding it here makes the `all_profiles` test fail.
const BUILTIN_FILES: &[(&str, &str)] = builtin_files! {
    "imx8mp",
    "intel-n100",
    "jetson-orin-nano-cpu",
    "rpi4",
    "rpi5",
    "x86-vm-2core",
};

/// All shipped profiles, sorted by name. Parsed and validated once, on first use.
///
/// # Panics
/// If a shipped profile file is invalid. The test suite parses every one of them, so this
/// cannot happen in a tested build.
pub fn builtin() -> &'static [DeviceProfile] {
    static BUILTIN: OnceLock<Vec<DeviceProfile>> = OnceLock::new();
    BUILTIN.get_or_init(|| {
        let mut profiles: Vec<DeviceProfile> = BUILTIN_FILES
            .iter()
            .map(|&(stem, text)| {
                let profile = parse(stem, text)
                    .unwrap_or_else(|e| panic!("built-in profile `{stem}.toml` is invalid: {e}"));
                assert_eq!(
                    profile.name, stem,
                    "built-in profile `{stem}.toml` must be named after its file"
                );
                profile
            })
            .collect();
        profiles.sort_by(|a, b| a.name.cmp(&b.name));
        profiles
    })
}

/// The shipped profile called `name`, if any.
pub fn find(name: &str) -> Option<&'static DeviceProfile> {
    builtin().iter().find(|p| p.name == name)
}

/// Parses and validates one profile from TOML text.
///
/// `name_hint` labels errors (use the file name or path the text came from); when empty,
/// errors are labelled with the profile's own `name`.
pub fn parse(name_hint: &str, toml_text: &str) -> Result<DeviceProfile, ProfileError> {
    let raw: RawProfile = toml::from_str(toml_text).map_err(|e| ProfileError::Toml {
        profile: name_hint.to_owned(),
        message: describe_toml_error(toml_text, &e),
    })?;
    let label = if name_hint.is_empty() { raw.name.clone() } else { name_hint.to_owned() };
    profile::validate(raw, &label)
}

/// Loads every `*.toml` file directly inside `path` (other files and sub-directories are
/// ignored), returning the profiles sorted by name.
///
/// Each profile's `name` must equal its file stem, which also makes names unique. Errors name
/// the directory or file involved.
pub fn load_dir(path: &Path) -> Result<Vec<DeviceProfile>, ProfileError> {
    let io_error = |p: &Path| {
        let path = p.to_path_buf();
        move |source| ProfileError::Io { path, source }
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(io_error(path))? {
        let file = entry.map_err(io_error(path))?.path();
        if file.extension() == Some(OsStr::new("toml")) && file.is_file() {
            files.push(file);
        }
    }
    files.sort();

    let mut profiles = Vec::with_capacity(files.len());
    for file in files {
        let text = fs::read_to_string(&file).map_err(io_error(&file))?;
        let profile = parse(&file.display().to_string(), &text)?;
        let stem = file.file_stem().and_then(OsStr::to_str).unwrap_or_default();
        if profile.name != stem {
            return Err(ProfileError::NameMismatch {
                stem: stem.to_owned(),
                name: profile.name,
                path: file,
            });
        }
        profiles.push(profile);
    }
    profiles.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(profiles)
}

/// The parser's message on one line, prefixed with the 1-based line and column when known.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim();
    let Some(offset) = error.span().map(|s| s.start) else {
        return format!("invalid profile TOML: {message}");
    };
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("invalid profile TOML at line {line}, column {column}: {message}")
}

#[cfg(test)]
mod tests;
