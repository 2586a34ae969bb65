//! The docs against the tree, read as a newcomer reads them: the README's
//! Tokens section's `switchboard token` line signs a token that a node
//! started the way `make run` starts one accepts, and without a secret the
//! command says which variable to set instead of failing obscurely;
//! docs/benchmarks.md has one "Latest run" table saying when, on which
//! commit and with which command it was measured, and older tables only
//! under "History". (The command errors of docs/protocol.md have their own
//! file, `command_errors.rs`.)

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;

/// The secret scripts/dev-run.sh (`make run`) gives its node.
const DEV_SECRET: &str = "switchboard-dev-secret-not-for-production";

/// The README's repo root.
fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The first ```sh block of the README's "## Tokens" section, joined into
/// one line.
fn readme_token_command() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme.split("\n## Tokens\n").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    let block = section
        .split("```sh\n")
        .nth(1)
        .expect("the README's Tokens section shows the token command")
        .split("```")
        .next()
        .unwrap();
    block.replace("\\\n", " ")
}

/// Runs `line` through `sh` in the repo root with no SWITCHBOARD_ variable
/// set, the README's `target/debug/switchboard` being this build's binary.
fn run(line: &str) -> std::process::Output {
    let line = line.replace(
        "target/debug/switchboard",
        env!("CARGO_BIN_EXE_switchboard"),
    );
    Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(root())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_readme_token_line_signs_a_token_a_dev_node_accepts() {
    let line = readme_token_command();
    assert!(line.contains(DEV_SECRET), "{line}");
    let dev_run = std::fs::read_to_string(root().join("scripts/dev-run.sh")).unwrap();
    assert!(
        dev_run.contains(&format!("SWITCHBOARD_JWT_HS256_SECRET:-{DEV_SECRET}")),
        "make run's secret is not the README's"
    );
    assert!(
        dev_run.contains("switchboard token --user alice --channel 'chat:*'"),
        "make run prints the README's line under \"More tokens\""
    );

    let output = run(&line);
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();

    let gateway = Gateway::builder()
        .env("SWITCHBOARD_JWT_HS256_SECRET", DEV_SECRET)
        .start();
    let (mut alice, welcome) = gateway.connect_token(&token).await;
    assert_eq!(welcome.user, "alice");
    within(alice.subscribe("chat:lobby")).await.unwrap();
}

#[test]
fn without_a_secret_the_token_command_shows_the_line_that_works() {
    let output = run("target/debug/switchboard token --user alice --channel 'chat:*'");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr,
        "switchboard: invalid configuration: SWITCHBOARD_JWT_HS256_SECRET / SWITCHBOARD_JWT_PUBLIC_KEY_FILE: \
         no JWT key configured: set an HS256 secret or a PEM public key file (tokens are never accepted unverified)\n\
         switchboard token signs with the HS256 secret the nodes verify with: set the same \
         SWITCHBOARD_JWT_HS256_SECRET, e.g. for a node started by make run:\n  \
         SWITCHBOARD_JWT_HS256_SECRET=switchboard-dev-secret-not-for-production switchboard token --user alice --channel 'chat:*'\n"
    );
}

#[test]
fn benchmarks_have_one_latest_run_with_its_date_commit_and_command() {
    let text = std::fs::read_to_string(root().join("docs/benchmarks.md")).unwrap();
    let sections: Vec<&str> = text.split("\n## ").collect();
    let latest: Vec<&&str> = sections
        .iter()
        .filter(|s| s.starts_with("Latest run\n"))
        .collect();
    assert_eq!(latest.len(), 1, "one \"## Latest run\" section");
    let latest = latest[0];
    let header = latest
        .lines()
        .find(|l| l.starts_with("Switchboard benchmarks ("))
        .expect("the run's header line, as make bench prints it");
    // Switchboard benchmarks (2026-12-05T22:10Z, commit 1a2b3c4)
    let inside = header
        .trim_start_matches("Switchboard benchmarks (")
        .trim_end_matches(')');
    let (date, commit) = inside.split_once(", commit ").expect("date and commit");
    assert!(
        date.len() == 17 && date.as_bytes()[10] == b'T' && date.ends_with('Z'),
        "{date}"
    );
    assert!(
        commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{commit}"
    );
    assert!(
        latest.lines().any(|l| l.starts_with("command: make bench")),
        "the command that produced it"
    );
    let tables = latest
        .lines()
        .filter(|l| l.starts_with("| scenario | result |"))
        .count();
    assert_eq!(tables, 1, "one table in the latest run");
    // A full-run table anywhere else is history.
    let history = text.find("\n## History\n").expect("a History section");
    let latest_at = text.find("\n## Latest run\n").unwrap();
    for (at, _) in text.match_indices("| scenario | result |") {
        assert!(
            at > history || (at > latest_at && at < latest_at + 1 + latest.len()),
            "a run table outside \"Latest run\" and \"History\" at byte {at}"
        );
    }
}
