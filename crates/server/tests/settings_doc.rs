//! docs/operations.md's table of settings and the binary's flags (`SettingsLayer`, which is
//! also the file's schema) must not drift: every setting is in the table with its flag and
//! its environment variable, the table names no setting that does not exist, and a default
//! that a flag's help states is the default the table gives.

#![allow(clippy::unwrap_used)] // a panic is the failure report

use std::collections::BTreeSet;

use clap::{Args, Command};
use shortlinks_server::config::SettingsLayer;

/// The settings table's rows: (file keys, flags, environment variables, default), each cell
/// as written.
fn table() -> Vec<[String; 4]> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("| file key | flag | environment | default |").expect("the settings table");
    text[start..]
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<String> = line.trim_matches('|').split(" | ").map(|c| c.trim().to_owned()).collect();
            assert_eq!(cells.len(), 4, "{line}");
            [cells[0].clone(), cells[1].clone(), cells[2].clone(), cells[3].clone()]
        })
        .collect()
}

/// The words in backticks in `cell`.
fn quoted(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// What a help text gives as the default, if it says: `default 50`, `default `sl``.
fn stated_default(help: &str) -> Option<String> {
    let rest = &help[help.find("default ")? + "default ".len()..];
    let value: String =
        rest.trim_start_matches('`').chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    (!value.is_empty()).then_some(value)
}

#[test]
fn the_settings_table_names_every_flag_with_its_variable_and_default() {
    let command = SettingsLayer::augment_args(Command::new("shortlinks"));
    let rows = table();
    let mut documented = BTreeSet::new();
    for arg in command.get_arguments() {
        let key = arg.get_id().as_str();
        let long = format!("--{}", arg.get_long().unwrap());
        let env = arg.get_env().unwrap().to_str().unwrap().to_owned();
        let row = rows
            .iter()
            .find(|row| quoted(&row[0]).contains(&key))
            .unwrap_or_else(|| panic!("docs/operations.md's settings table has no row for `{key}`"));
        assert!(quoted(&row[1]).contains(&long.as_str()), "`{key}`'s row does not give its flag {long}: {:?}", row[1]);
        assert!(
            quoted(&row[2]).contains(&env.as_str()),
            "`{key}`'s row does not give its variable {env}: {:?}",
            row[2]
        );
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        if let Some(default) = stated_default(&help) {
            assert!(row[3].contains(&default), "`{key}`: --help says default {default}, the table says {:?}", row[3]);
        }
        documented.insert(key.to_owned());
    }
    // The file-only tables, and nothing else, are in the table without a flag.
    let file_only = ["amocrm_connections"];
    for row in &rows {
        for key in quoted(&row[0]).into_iter().filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_')) {
            let known = documented.contains(key) || file_only.contains(&key);
            assert!(
                known || ["account", "subdomain", "base_url", "token", "token_file"].contains(&key),
                "the table names `{key}`, which is no setting"
            );
        }
    }
    assert!(documented.len() > 50, "the flags were read: {}", documented.len());
}

/// The defaults the help states are the ones the code applies (those it can compare).
#[test]
fn the_help_states_the_defaults_the_code_applies() {
    let command = SettingsLayer::augment_args(Command::new("shortlinks"));
    let stated = |key: &str| {
        let arg = command.get_arguments().find(|a| a.get_id() == key).unwrap();
        stated_default(&arg.get_help().unwrap().to_string()).unwrap_or_else(|| panic!("`{key}` states no default"))
    };
    let settings = SettingsLayer::default().resolve().unwrap();
    let (limits, clicks) = (settings.limits, settings.clicks);
    for (key, applied) in [
        ("max_body_bytes", limits.max_body_bytes as u64),
        ("max_header_bytes", limits.max_header_bytes as u64),
        ("header_read_timeout_secs", limits.header_read_timeout.as_secs()),
        ("body_read_timeout_secs", limits.body_read_timeout.as_secs()),
        ("send_timeout_secs", limits.send_timeout.as_secs()),
        ("shutdown_grace_secs", limits.shutdown_grace.as_secs()),
        ("api_rate_per_sec", u64::from(limits.api_rate.per_second)),
        ("api_rate_burst", u64::from(limits.api_rate.burst)),
        ("cached_links", settings.cached_links as u64),
        ("sled_cache_mib", settings.sled_cache_bytes >> 20),
        ("dedup_window_secs", clicks.dedup_window.as_secs()),
        ("notes_per_link", u64::from(clicks.notes_per_link)),
        ("note_hold_secs", clicks.note_hold.as_secs()),
        ("address_rule_contacts", u64::from(clicks.address_rule.contacts)),
        ("address_rule_window_secs", clicks.address_rule.window.as_secs()),
        ("sink_timeout_secs", clicks.sink_timeout.as_secs()),
        ("sink_retry_max_ms", clicks.sink_retry_max.as_millis() as u64),
    ] {
        assert_eq!(stated(key), applied.to_string(), "`{key}`: the help's default and the code's");
    }
    assert_eq!(stated("listen"), settings.listen.ip().to_string().split('.').next().unwrap(), "listen");
}
