//! Texts with optional labels from a JSON Lines or CSV file, tokenized by a `tokenizer.json`.

use std::path::Path;

use anyhow::{Context as _, bail};

use super::{DataFormat, DataSpec, MAX_DATA_BYTES, index_labels, user_split};
use crate::data::{Split, Tokenizer};

/// Texts opened from a [`DataSpec`] (see [`crate::eval::EvalData::open`]).
#[derive(Debug, Clone)]
pub struct UserTexts {
    name: String,
    spec: DataSpec,
    texts: Vec<String>,
    labels: Option<Vec<u32>>,
    classes: Vec<String>,
    num_classes: Option<usize>,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) seq_len: Option<usize>,
    split: Split,
}

/// A label as written: a name or a class index.
enum Label {
    Name(String),
    Index(u32),
}

impl UserTexts {
    /// Reads the file and the tokenizer.
    pub(crate) fn open(
        path: &Path,
        format: DataFormat,
        spec: &DataSpec,
    ) -> anyhow::Result<UserTexts> {
        let file = path.display().to_string();
        let len = std::fs::metadata(path).with_context(|| format!("reading {file}"))?.len();
        if len > MAX_DATA_BYTES as u64 {
            bail!("{file}: {len} bytes, more than the {} MiB Hone reads", MAX_DATA_BYTES >> 20);
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {file}"))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| anyhow::anyhow!("{file}: not UTF-8 at byte {}", e.valid_up_to()))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let rows = match format {
            DataFormat::Csv => parse_csv(text, &file)?,
            _ => parse_jsonl(text, &file)?,
        };
        if rows.is_empty() {
            bail!("{file}: no texts");
        }
        let with = rows.iter().filter(|r| r.1.is_some()).count();
        if with != 0 && with != rows.len() {
            let line = rows.iter().find(|r| r.1.is_none()).map_or(0, |r| r.2);
            bail!(
                "{file}: {with} of {} texts have a label, not all (line {line} has none): label \
                 every text or none",
                rows.len()
            );
        }
        let (labels, classes, num_classes) = if with == 0 {
            (None, Vec::new(), None)
        } else {
            let names = rows.iter().filter(|r| matches!(r.1, Some(Label::Name(_)))).count();
            if names != 0 && names != rows.len() {
                bail!("{file}: labels mix names and integers: use one kind");
            }
            if names > 0 {
                let names: Vec<String> = rows
                    .iter()
                    .map(|r| match &r.1 {
                        Some(Label::Name(n)) => n.clone(),
                        _ => String::new(),
                    })
                    .collect();
                let (classes, idx) = index_labels(&names);
                let n = classes.len();
                (Some(idx), classes, Some(n))
            } else {
                let idx: Vec<u32> = rows
                    .iter()
                    .map(|r| match r.1 {
                        Some(Label::Index(i)) => i,
                        _ => 0,
                    })
                    .collect();
                let n = idx.iter().max().map_or(0, |&m| m as usize + 1);
                (Some(idx), Vec::new(), Some(n))
            }
        };
        let tok_path = spec.tokenizer_path()?;
        let tokenizer =
            Tokenizer::from_file(&tok_path).with_context(|| format!("the tokenizer for {file}"))?;
        let texts: Vec<String> = rows.into_iter().map(|r| r.0).collect();
        Ok(UserTexts {
            name: file,
            spec: spec.clone(),
            split: user_split(texts.len()),
            texts,
            labels,
            classes,
            num_classes,
            tokenizer,
            seq_len: None,
        })
    }

    /// The file, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The spec it was opened with.
    pub fn spec(&self) -> &DataSpec {
        &self.spec
    }

    /// The texts, in file order.
    pub fn texts(&self) -> &[String] {
        &self.texts
    }

    /// Class of each text, when labelled.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    /// The label names in class order, when the labels are names (empty for integer labels).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Number of classes: the distinct names, or the largest integer label plus one.
    pub fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }

    /// Number of texts.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether there are no texts (never: an empty file is an error at open).
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The fixed split.
    pub fn split(&self) -> &Split {
        &self.split
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

type Row = (String, Option<Label>, usize);

fn label_of(v: &serde_json::Value, file: &str, line: usize) -> anyhow::Result<Option<Label>> {
    Ok(match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(Label::Name(s.clone())),
        serde_json::Value::Number(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(i) => Some(Label::Index(i)),
            None => bail!("{file}: line {line}: label {n} is not a class index (0..2^32)"),
        },
        other => bail!("{file}: line {line}: label {other} is neither a name nor an integer"),
    })
}

/// One JSON object a line: `text` (a string) and optional `label` (a string or an integer).
fn parse_jsonl(text: &str, file: &str) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{file}: line {line_no}: invalid JSON: {e}"))?;
        let Some(obj) = v.as_object() else {
            bail!("{file}: line {line_no}: not a JSON object");
        };
        let Some(text) = obj.get("text").and_then(|t| t.as_str()) else {
            bail!("{file}: line {line_no}: no string field `text`");
        };
        let label = match obj.get("label") {
            Some(l) => label_of(l, file, line_no)?,
            None => None,
        };
        rows.push((text.to_owned(), label, line_no));
    }
    Ok(rows)
}

/// Records of an RFC 4180 CSV text (quoted fields, `""` for a quote, line breaks inside quotes),
/// with the line each starts on.
fn csv_records(text: &str, file: &str) -> anyhow::Result<Vec<(Vec<String>, usize)>> {
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let (mut line, mut start) = (1, 1);
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(ch) = chars.next() {
        if quoted {
            match ch {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            }
            continue;
        }
        match ch {
            '"' if field.is_empty() => quoted = true,
            ',' => fields.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                if any || fields.len() > 1 || !fields[0].is_empty() {
                    records.push((std::mem::take(&mut fields), start));
                }
                fields.clear();
                line += 1;
                start = line;
                any = false;
                continue;
            }
            c => field.push(c),
        }
        any = true;
    }
    if quoted {
        bail!("{file}: line {start}: a quoted field is not closed");
    }
    if any || !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        records.push((fields, start));
    }
    Ok(records)
}

/// A header row with a `text` column and an optional `label` column; labels that all read as
/// integers are class indices, otherwise names.
fn parse_csv(text: &str, file: &str) -> anyhow::Result<Vec<Row>> {
    let records = csv_records(text, file)?;
    let Some(((header, _), body)) = records.split_first() else {
        bail!("{file}: empty CSV: expected a header row with a `text` column");
    };
    let col = |name: &str| header.iter().position(|h| h.trim().eq_ignore_ascii_case(name));
    let Some(text_col) = col("text") else {
        bail!("{file}: the header row ({}) has no `text` column", header.join(","));
    };
    let label_col = col("label");
    let ints = label_col.is_some_and(|c| {
        body.iter().all(|(r, _)| r.get(c).is_some_and(|l| l.trim().parse::<u32>().is_ok()))
    });
    let mut rows = Vec::with_capacity(body.len());
    for (r, line) in body {
        if r.len() != header.len() {
            bail!("{file}: line {line}: {} fields, but the header has {}", r.len(), header.len());
        }
        let label = label_col.map(|c| r[c].trim()).filter(|l| !l.is_empty()).map(|l| {
            if ints { Label::Index(l.parse().unwrap_or(0)) } else { Label::Name(l.to_owned()) }
        });
        rows.push((r[text_col].clone(), label, *line));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_handles_quotes_commas_and_line_breaks() {
        let r = csv_records("text,label\n\"a, \"\"b\"\"\nc\",x\r\nplain,y\n", "f").unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].0, ["a, \"b\"\nc", "x"]);
        assert_eq!((r[2].0.clone(), r[2].1), (vec!["plain".to_owned(), "y".to_owned()], 4));
        let e = csv_records("text\n\"open", "f.csv").unwrap_err().to_string();
        assert!(e.contains("f.csv: line 2") && e.contains("not closed"), "{e}");
    }
}
