//! Parsing `$KRT_OUTPUT`: `key=value` lines and the multi-line form
//!
//! ```text
//! notes<<EOF
//! line one
//! line two
//! EOF
//! ```
//!
//! Bounded: at most [`MAX_KEYS`] keys and [`MAX_BYTES`] in total per job.
//! Going over is an error naming the key; a value is never cut short.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;

/// Most output keys a job may write.
pub const MAX_KEYS: usize = 64;
/// Most bytes (keys plus values) a job may write.
pub const MAX_BYTES: usize = 64 * 1024;

/// Why the outputs file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    /// A line that is neither `key=value` nor `key<<DELIM`.
    #[error("line {line} of $KRT_OUTPUT is not `key=value` or `key<<DELIMITER`: `{text}`")]
    Malformed { line: usize, text: String },
    /// A key with characters other than letters, digits, `_` and `-`.
    #[error(
        "output key `{key}` (line {line} of $KRT_OUTPUT) must start with a letter or `_` and hold only letters, digits, `_` and `-`"
    )]
    BadKey { line: usize, key: String },
    /// `key<<DELIM` without the closing line.
    #[error(
        "output `{key}` starts a multi-line value on line {line} of $KRT_OUTPUT but its delimiter `{delimiter}` never follows"
    )]
    Unterminated {
        line: usize,
        key: String,
        delimiter: String,
    },
    /// More than [`MAX_KEYS`] keys.
    #[error(
        "output `{key}` is key number {count}, over the limit of {MAX_KEYS} keys per job (hint: write larger or more numerous values to a file and publish it as an artifact)"
    )]
    TooManyKeys { key: String, count: usize },
    /// More than [`MAX_BYTES`] in total.
    #[error(
        "output `{key}` brings the job's outputs over the limit of {MAX_BYTES} bytes in total (hint: write large values to a file and publish it as an artifact)"
    )]
    TooLarge { key: String },
    /// The file could not be read.
    #[error("cannot read $KRT_OUTPUT: {0}")]
    Io(String),
}

fn valid_key(k: &str) -> bool {
    let mut b = k.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// Parses the text of an outputs file. Later values of a key replace earlier
/// ones; limits count the final set.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, OutputError> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) =
            if let Some((k, delim)) = line.split_once("<<").filter(|(k, _)| !k.contains('=')) {
                let mut value: Vec<&str> = Vec::new();
                let mut closed = false;
                for (_, l) in lines.by_ref() {
                    if l == delim {
                        closed = true;
                        break;
                    }
                    value.push(l);
                }
                if !closed || delim.is_empty() {
                    return Err(OutputError::Unterminated {
                        line: n,
                        key: k.to_string(),
                        delimiter: delim.to_string(),
                    });
                }
                (k, value.join("\n"))
            } else if let Some((k, v)) = line.split_once('=') {
                (k, v.to_string())
            } else {
                return Err(OutputError::Malformed {
                    line: n,
                    text: line.chars().take(120).collect(),
                });
            };
        if !valid_key(key) {
            return Err(OutputError::BadKey {
                line: n,
                key: key.chars().take(80).collect(),
            });
        }
        out.insert(key.to_string(), value);
        if out.len() > MAX_KEYS {
            return Err(OutputError::TooManyKeys {
                key: key.to_string(),
                count: out.len(),
            });
        }
        let total: usize = out.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > MAX_BYTES {
            return Err(OutputError::TooLarge {
                key: key.to_string(),
            });
        }
    }
    Ok(out)
}

/// Reads and parses an outputs file without ever loading more than a bounded
/// prefix: a file far over the limit fails on the key that crosses it.
pub fn read(path: &Path) -> Result<BTreeMap<String, String>, OutputError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(OutputError::Io(e.to_string())),
    };
    // Twice the limit leaves room for overwritten keys and the multi-line
    // syntax; anything longer fails inside `parse` on the crossing key, or
    // below when the prefix itself was within bounds.
    let cap = (2 * MAX_BYTES + 1) as u64;
    let mut buf = Vec::new();
    file.take(cap)
        .read_to_end(&mut buf)
        .map_err(|e| OutputError::Io(e.to_string()))?;
    let text = String::from_utf8_lossy(&buf);
    let parsed = parse(&text);
    if buf.len() as u64 == cap {
        // The prefix parsed within limits but the file goes on.
        let key = parsed
            .as_ref()
            .ok()
            .and_then(|m| m.keys().last().cloned())
            .unwrap_or_else(|| "?".into());
        return match parsed {
            Err(e) => Err(e),
            Ok(_) => Err(OutputError::TooLarge { key }),
        };
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_and_multiline_values_parse() {
        let m = parse("a=1\nb=x=y\nnotes<<EOF\nline 1\n\nline 3\nEOF\na=2\n").unwrap();
        assert_eq!(m["a"], "2");
        assert_eq!(m["b"], "x=y");
        assert_eq!(m["notes"], "line 1\n\nline 3");
    }

    #[test]
    fn malformed_lines_and_keys_are_named() {
        assert_eq!(
            parse("ok=1\njust text\n"),
            Err(OutputError::Malformed {
                line: 2,
                text: "just text".into()
            })
        );
        assert!(matches!(
            parse("a b=1"),
            Err(OutputError::BadKey { line: 1, .. })
        ));
        assert!(matches!(
            parse("k<<EOF\nno end\n"),
            Err(OutputError::Unterminated { .. })
        ));
    }

    #[test]
    fn too_many_keys_names_the_key_over_the_limit() {
        let text: String = (0..65).map(|i| format!("k{i}=v\n")).collect();
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e,
            OutputError::TooManyKeys {
                key: "k64".into(),
                count: 65
            }
        );
        assert!(e.to_string().contains("artifact"));
    }

    #[test]
    fn too_many_bytes_names_the_key_and_never_truncates() {
        let big = "x".repeat(40 * 1024);
        let e = parse(&format!("a={big}\nb={big}\n")).unwrap_err();
        assert_eq!(e, OutputError::TooLarge { key: "b".into() });
    }
}
