//! The file written on first run: every key with its default, commented out, under a line from
//! [`super::keys::KEYS`] saying what it does, so a user edits a documented file and a key
//! left commented out keeps its default (newer defaults reach them after an update).

use std::fmt::Write as _;

use super::{keys, Config};

/// The `[[sync.redact]]` example at the end of the generated file: the README's. Tables, not a
/// `redact = []` line: uncommenting that line and adding tables, as the README shows, was a
/// duplicate key (issue 10). Tables must follow every `[sync]` key, hence the end of the file.
const REDACT_EXAMPLE: &str = "\
# Each rule is a [[sync.redact]] table. Tables go at the end of the file: a key below a table's
# header belongs to that table, not to [sync]. To use these examples, remove the \"# \" of each line.
#
# [[sync.redact]]
# buckets = \"aw-watcher-window_*\"   # a bucket-id pattern, and/or
# types = \"currentwindow\"           # a bucket type (also a pattern)
# drop = [\"title\"]                  # removed from the event's data
#
# [[sync.redact]]
# types = \"web.tab.current\"
# hash = [\"url\", \"title\"]           # replaced by \"blake3:<hex>\"
";

/// The text of the file written on first run: every key with its default, commented out, with
/// a line saying what it does. Section headers stay uncommented so that uncommenting a key is
/// all a user has to do. Parses to [`Config::default`]. `sync.redact`, a list of tables, is
/// shown as commented-out example tables at the end ([`REDACT_EXAMPLE`]).
pub fn default_file_contents() -> Result<String, toml::ser::Error> {
    let defaults = toml::to_string(&Config::default())?;
    let mut out = String::from(
        "# aw-sync-samay configuration.\n\
         #\n\
         # Every key is listed below with its default value, commented out. To change one, remove\n\
         # the \"# \" in front of it (keep it under its [section]) and edit the value. Keys left\n\
         # commented out keep their defaults, so newer defaults reach you after an update.\n",
    );
    let mut section = String::new();
    for line in defaults.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            out.push('\n');
        } else if trimmed.starts_with('[') {
            section = trimmed.trim_matches(|c| c == '[' || c == ']').to_owned();
            if !out.ends_with("\n\n") {
                out.push('\n');
            }
            let _ = writeln!(out, "{trimmed}");
        } else {
            if let Some((key, _)) = trimmed.split_once(" = ") {
                let path = if section.is_empty() {
                    key.to_owned()
                } else {
                    format!("{section}.{key}")
                };
                if path == "sync.redact" {
                    continue;
                }
                if let Some(doc) = keys::key_doc(&path) {
                    let _ = writeln!(out, "# {doc}");
                }
            }
            let _ = writeln!(out, "# {line}");
        }
    }
    if let Some(doc) = keys::key_doc("sync.redact") {
        let _ = writeln!(out, "\n# {doc}");
    }
    out.push_str(REDACT_EXAMPLE);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse;

    #[test]
    fn every_key_is_documented_and_every_doc_is_a_key() {
        let defaults = toml::Value::try_from(Config::default()).expect("serializes");
        let mut keys = Vec::new();
        collect_keys(&defaults, "", &mut keys);
        for key in &keys {
            assert!(keys::key_doc(key).is_some(), "no doc line for `{key}`");
        }
        for key in keys::KEYS.iter().map(|k| k.name) {
            assert!(keys.iter().any(|k| k == key), "doc for `{key}`, not a key");
        }
        let text = default_file_contents().expect("renders");
        for key in keys::KEYS.iter().map(|k| k.name) {
            let doc = keys::key_doc(key).expect("documented");
            assert_eq!(
                text.matches(&format!("# {doc}\n")).count(),
                1,
                "{key}:\n{text}"
            );
        }
    }

    fn collect_keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(table) = value {
            for (k, v) in table {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if v.is_table() {
                    collect_keys(v, &path, out);
                } else {
                    out.push(path);
                }
            }
        }
    }

    #[test]
    fn default_file_parses_to_defaults_commented_and_uncommented() {
        let text = default_file_contents().expect("renders");
        let (config, warnings) = parse(&text, Path::new("x.toml")).expect("parses");
        assert_eq!(config, Config::default());
        assert!(warnings.is_empty());

        // Uncomment every key's line: the values written must be the defaults themselves.
        let (keys, example) = text.split_at(text.find(REDACT_EXAMPLE).expect("example"));
        let uncommented = uncomment(keys, |l| l.contains(" = ")) + example;
        assert_ne!(uncommented, text);
        let (config, warnings) = parse(&uncommented, Path::new("x.toml")).expect("parses");
        assert_eq!(config, Config::default(), "{uncommented}");
        assert!(warnings.is_empty(), "{warnings:?}");

        // And the redaction example's lines too: two rules, every key still parsing.
        let all =
            uncomment(keys, |l| l.contains(" = ")) + &uncomment(example, |l| l.contains(" = "));
        let (config, _) = parse(&all, Path::new("x.toml")).unwrap_or_else(|e| panic!("{e}\n{all}"));
        assert_eq!(config.sync.redact.len(), 2, "{all}");
        assert_eq!(config.sync.redact[0].drop, ["title"]);
        assert_eq!(config.sync.redact[1].hash, ["url", "title"]);
    }

    /// The template's text with the "# " removed from the commented lines `pick` selects (and
    /// from example table headers), as a user editing it would.
    fn uncomment(text: &str, pick: impl Fn(&str) -> bool) -> String {
        text.lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if pick(rest) || rest.starts_with("[[") => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Issue 10: uncommenting `# redact = []` and adding the README's `[[sync.redact]]` tables
    /// was a duplicate key. Following the README's privacy example on the generated file — its
    /// `[sync]` keys set where the template has them, its tables added at the end — loads as the
    /// example itself does.
    #[test]
    fn the_readme_privacy_example_works_on_the_generated_file() {
        let readme = include_str!("../../README.md");
        let from = readme
            .find("### Privacy")
            .expect("the README's privacy section");
        let block = readme[from..]
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("its toml block");
        let (expected, _) = parse(block, Path::new("README.md")).expect("the example parses");
        assert_eq!(expected.sync.redact.len(), 2, "{block}");
        let tables_at = block.find("[[sync.redact]]").expect("tables");
        let (keys, tables) = block.split_at(tables_at);

        let mut text = default_file_contents().expect("renders");
        for line in keys.lines().filter(|l| l.contains(" = ")) {
            let key = line.split(" = ").next().unwrap_or(line);
            let commented = text
                .lines()
                .find(|l| l.starts_with(&format!("# {key} = ")))
                .unwrap_or_else(|| panic!("`{key}` is in the template"))
                .to_string();
            text = text.replacen(&commented, line, 1);
        }
        text.push_str(tables);
        let (config, _) =
            parse(&text, Path::new("x.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.sync, expected.sync);
    }
}
