//! Any text as the config file: parsed (with file:line:col errors) and validated; what parses
//! renders back to TOML that parses to the same config.
#![no_main]

use std::path::Path;

use aw_sync_samay::config::{self, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match config::parse(text, Path::new("c.toml")) {
        Ok((config, _warnings)) => {
            if let Err(e) = config.validate() {
                assert!(e.key().is_some(), "{e}");
            }
            // Values TOML cannot hold (u64 over i64::MAX) cannot come from a file either.
            let rendered = toml::to_string(&config).expect("a parsed config renders");
            let (back, warnings) =
                config::parse(&rendered, Path::new("c.toml")).expect("renders to valid TOML");
            assert_eq!(back, config, "{rendered}");
            assert!(warnings.is_empty(), "{warnings:?}");
        }
        Err(ConfigError::Parse { line, column, .. }) => {
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(line >= 1 && line <= lines.len(), "line {line}");
            assert!(
                column >= 1 && column <= lines[line - 1].chars().count() + 1,
                "column {column}"
            );
        }
        Err(e) => panic!("parse returned {e:?}"),
    }
});
