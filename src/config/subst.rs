//! `${env:VAR}`, `${env:VAR:-default}` and `${file:/path}` in config values, as the
//! OpenTelemetry Collector resolves them, so secrets come from a Kubernetes Secret
//! (environment or mounted file) and never sit in the config file.
//!
//! References are resolved in every scalar value (not in keys), after the YAML is
//! parsed, so a resolved value containing `: ` or `#` stays one string. A value that
//! is exactly one reference takes the type its text reads as (`${env:PCT}` with
//! `PCT=25` is the number 25), as in the Collector; references inside a longer string
//! are spliced in as text. `${VAR}` is `${env:VAR}`; `$${` writes a literal `${`.
//! A file's content loses one trailing newline (as `kubectl create secret
//! --from-file` files often end). An unset variable without a default, an unreadable
//! file or an unknown scheme is an error naming the field and the reference, never a
//! resolved value; so is any later error about a resolved field ([`Resolved`]).
//! `${file:...}` reads regular files of at most [`MAX_FILE_BYTES`] only: a FIFO
//! would block the load forever and `/dev/zero` would never end.

use std::io::Read as _;
use std::path::Path;

use serde_yaml_ng::Value;

use super::ConfigError;

/// Where references are resolved from: the process environment and files, or a
/// test's own.
pub(super) trait Sources {
    /// The value of environment variable `name`, if set.
    fn env(&self, name: &str) -> Option<String>;
    /// The content of the file at `path`.
    fn file(&self, path: &str) -> std::io::Result<String>;
}

/// The process's environment and file system.
pub(super) struct Process;

impl Sources for Process {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn file(&self, path: &str) -> std::io::Result<String> {
        read_file(Path::new(path))
    }
}

/// The most a `${file:...}` reference reads: secrets, certificates and tokens, not
/// data.
pub(super) const MAX_FILE_BYTES: u64 = 1 << 20;

/// A regular file's text, if it is at most [`MAX_FILE_BYTES`] long (a mounted
/// Kubernetes Secret is a symbolic link to one, which is followed).
fn read_file(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file: a FIFO, device or directory is not read",
        ));
    }
    let too_large = || {
        Error::new(
            ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        )
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| Error::new(ErrorKind::InvalidData, "not UTF-8 text"))
}

/// What the references of a config resolved to, so that errors found later (a type
/// that does not fit, a value out of range) name the reference as written, never
/// the value it resolved to (a secret, say).
#[derive(Debug, Default)]
pub(super) struct Resolved(Vec<Resolution>);

#[derive(Debug)]
struct Resolution {
    /// The field, e.g. `kafka.producer.sasl.password`.
    field: String,
    /// The value as written, references and all.
    written: String,
    /// What it resolved to.
    value: String,
}

impl Resolved {
    /// `text` with each resolved value in it (of 4 bytes or more: shorter ones would
    /// match unrelated text) replaced by the value as written.
    pub(super) fn redact_text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for r in self.0.iter().filter(|r| r.value.len() >= 4) {
            out = out.replace(&r.value, &r.written);
        }
        out
    }

    /// `e` without any resolved value: the value of a resolved field is shown as
    /// written.
    pub(super) fn redact(&self, e: ConfigError) -> ConfigError {
        match e {
            ConfigError::Invalid {
                field,
                value,
                expected,
            } => {
                let value = match self.0.iter().find(|r| r.field == field) {
                    Some(r) => r.written.clone(),
                    None => self.redact_text(&value),
                };
                ConfigError::Invalid {
                    value,
                    expected: self.redact_text(&expected),
                    field,
                }
            }
            ConfigError::Schema { field, message } => {
                let message = match self.0.iter().find(|r| r.field == field) {
                    Some(r) => self.redact_text(&message).replace(&r.value, &r.written),
                    None => self.redact_text(&message),
                };
                ConfigError::Schema { field, message }
            }
            other => other,
        }
    }
}

/// Resolves every reference in `doc`'s scalar values.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the field (`kafka.producer.sasl.password`) and the
/// reference that could not be resolved.
pub(super) fn resolve(doc: &mut Value, sources: &dyn Sources) -> Result<Resolved, ConfigError> {
    let mut resolved = Resolved::default();
    walk(doc, &mut String::new(), sources, &mut resolved)?;
    Ok(resolved)
}

fn walk(
    v: &mut Value,
    path: &mut String,
    sources: &dyn Sources,
    resolved: &mut Resolved,
) -> Result<(), ConfigError> {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                match k {
                    Value::String(s) => path.push_str(s),
                    other => path.push_str(&format!("{other:?}")),
                }
                walk(child, path, sources, resolved)?;
                path.truncate(len);
            }
        }
        Value::Sequence(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(child, path, sources, resolved)?;
                path.truncate(len);
            }
        }
        Value::String(s) if s.contains('$') => {
            let (text, whole) = substitute(s, sources).map_err(|(reference, expected)| {
                ConfigError::invalid(path.as_str(), reference, expected)
            })?;
            if text != *s {
                resolved.0.push(Resolution {
                    field: path.clone(),
                    written: s.clone(),
                    value: text.clone(),
                });
            }
            *v = if whole {
                typed(text)
            } else {
                Value::String(text)
            };
        }
        Value::Tagged(t) => walk(&mut t.value, path, sources, resolved)?,
        _ => {}
    }
    Ok(())
}

/// A whole-value reference's text as the YAML scalar it reads as: a number, a
/// boolean or null stay typed; anything else (a mapping, a list) stays the string.
fn typed(text: String) -> Value {
    match serde_yaml_ng::from_str::<Value>(&text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Null)) if !text.trim().is_empty() => v,
        _ => Value::String(text),
    }
}

/// `s` with its references resolved, and whether `s` was exactly one reference.
/// `Err((reference, expected))` for the first that cannot be.
fn substitute(s: &str, sources: &dyn Sources) -> Result<(String, bool), (String, String)> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut refs = 0;
    let mut literal = false;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            literal = true;
            continue;
        }
        let Some(body_start) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err((
                tail.to_string(),
                "a reference closed by `}`: ${env:VAR}, ${env:VAR:-default} or ${file:/path}"
                    .into(),
            ));
        };
        let body = &body_start[..end];
        let reference = format!("${{{body}}}");
        out.push_str(&lookup(body, sources).map_err(|expected| (reference, expected))?);
        refs += 1;
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    let whole = refs == 1 && !literal && s.starts_with("${") && s.ends_with('}') && {
        // One reference spanning the whole value.
        s[2..].find('}') == Some(s.len() - 3)
    };
    Ok((out, whole))
}

/// The value of one reference body (`env:NAME`, `env:NAME:-default`, `NAME`,
/// `file:/path`); `Err(expected)` when it has none.
fn lookup(body: &str, sources: &dyn Sources) -> Result<String, String> {
    let (scheme, rest) = match body.split_once(':') {
        Some(("env", r)) => ("env", r),
        Some(("file", r)) => ("file", r),
        // `${VAR:-default}`: the environment, by default.
        Some((_, r)) if r.starts_with('-') => ("env", body),
        Some((s, _)) => {
            return Err(format!(
                "a reference of scheme `env` or `file`, not `{s}`: ${{env:VAR}}, ${{env:VAR:-default}} or ${{file:/path}}"
            ))
        }
        None => ("env", body),
    };
    if scheme == "file" {
        if rest.is_empty() {
            return Err("a file path after `file:`".into());
        }
        return sources
            .file(rest)
            .map(|mut text| {
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                text
            })
            .map_err(|e| format!("a readable file ({e})"));
    }
    let (name, default) = match rest.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (rest, None),
    };
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "an environment variable name of letters, digits and `_` (not {name:?})"
        ));
    }
    match (sources.env(name), default) {
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d.to_string()),
        (None, None) => Err(format!(
            "environment variable {name} to be set (or a default: ${{env:{name}:-value}})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Fake(HashMap<&'static str, &'static str>);

    impl Sources for Fake {
        fn env(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| (*v).to_string())
        }
        fn file(&self, path: &str) -> std::io::Result<String> {
            self.0
                .get(path)
                .map(|v| (*v).to_string())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
        }
    }

    fn fake() -> Fake {
        Fake(HashMap::from([
            ("PASS", "s3cr3t: #not a comment"),
            ("PCT", "25"),
            ("ON", "true"),
            ("/run/secrets/pw", "from-file\n"),
        ]))
    }

    fn resolved(yaml: &str) -> Result<Value, ConfigError> {
        let mut v: Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        resolve(&mut v, &fake()).map(|_| v)
    }

    #[test]
    fn references_resolve_in_values_with_their_types() {
        let v = resolved(
            "a: ${env:PASS}\nb: ${PCT}\nc: ${env:ON}\nd: pre-${env:PCT}-post\ne: ${file:/run/secrets/pw}\nf: ${env:MISSING:-fallback}\nf2: ${MISSING:-x}\ng: $${env:PASS}\nh: [\"${env:PCT}\"]\ni: cost $5\n",
        )
        .expect("resolves");
        assert_eq!(v["a"], Value::String("s3cr3t: #not a comment".into()));
        assert_eq!(v["b"], Value::Number(25.into()));
        assert_eq!(v["c"], Value::Bool(true));
        assert_eq!(v["d"], Value::String("pre-25-post".into()));
        assert_eq!(v["e"], Value::String("from-file".into()));
        assert_eq!(v["f"], Value::String("fallback".into()));
        assert_eq!(v["f2"], Value::String("x".into()));
        assert_eq!(v["g"], Value::String("${env:PASS}".into()), "escaped");
        assert_eq!(v["h"][0], Value::Number(25.into()));
        assert_eq!(v["i"], Value::String("cost $5".into()));
    }

    #[test]
    fn an_unresolvable_reference_names_field_and_reference_never_a_value() {
        for (yaml, field, reference) in [
            (
                "kafka: {producer: {sasl.password: \"${env:NOPE}\"}}",
                "kafka.producer.sasl.password",
                "${env:NOPE}",
            ),
            ("a: [x, \"${file:/nope}\"]", "a[1]", "${file:/nope}"),
            ("a: \"${vault:PASS}\"", "a", "${vault:PASS}"),
            ("a: \"${env:PASS\"", "a", "${env:PASS"),
            ("a: \"${env:9X}\"", "a", "${env:9X}"),
        ] {
            let e = resolved(yaml).expect_err(yaml).to_string();
            assert!(e.contains(field) && e.contains(reference), "{yaml}: {e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn errors_about_a_resolved_field_show_it_as_written() {
        let mut v: Value =
            serde_yaml_ng::from_str("a: ${env:PASS}\nb: x-${env:PASS}\n").expect("yaml");
        let r = resolve(&mut v, &fake()).expect("resolves");
        let e = r.redact(ConfigError::invalid(
            "a",
            "s3cr3t: #not a comment",
            "a number",
        ));
        let text = e.to_string();
        assert!(
            text.contains("${env:PASS}") && !text.contains("s3cr3t"),
            "{text}"
        );
        let e = r.redact(ConfigError::Schema {
            field: "b".into(),
            message: "invalid type: string \"x-s3cr3t: #not a comment\", expected u64".into(),
        });
        let text = e.to_string();
        assert!(
            text.contains("x-${env:PASS}") && !text.contains("s3cr3t"),
            "{text}"
        );
    }

    #[test]
    fn file_references_read_small_regular_files_only() {
        let dir = std::env::temp_dir().join(format!("tailsift-subst-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ok = dir.join("secret");
        std::fs::write(&ok, "pw\n").expect("write");
        assert_eq!(read_file(&ok).expect("read"), "pw\n");
        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES as usize + 1]).expect("write");
        let e = read_file(&big).expect_err("too large").to_string();
        assert!(e.contains("larger than"), "{e}");
        let e = read_file(Path::new("/dev/zero"))
            .expect_err("a device")
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        if made {
            // Opening a FIFO for reading blocks until a writer comes: it must be
            // refused before it is opened.
            let e = read_file(&fifo).expect_err("a FIFO").to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
