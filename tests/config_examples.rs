//! Every example config shipped in the repo (examples/*.toml and the README's TOML blocks)
//! parses and validates, so documentation cannot drift from the code.

use std::path::Path;

use spillway::config::Settings;

#[test]
fn example_files_are_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir("examples").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            Settings::from_toml(&text, &path).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 2, "examples/*.toml found: {checked}");
}

#[test]
fn readme_toml_blocks_are_valid() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => current = Some(String::new()),
            (Some(block), l) if l.starts_with("```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            // Secrets kept in a file or the environment exist where the daemon runs, not here.
            (Some(block), l) if l.starts_with("secret_file") || l.starts_with("secret_env") => {
                block.push_str("secret = \"from the file or the environment\"\n");
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    assert!(!blocks.is_empty());
    for block in blocks {
        Settings::from_toml(&block, Path::new("README.md")).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn a_bad_config_names_the_file_field_and_problem() {
    let err = Settings::from_toml(
        "[[stream]]\nname = \"s\"\nbucket_arn = \"arn:aws:s3:::b-1\"\nbuffering_hints = { interval_in_seconds = 901 }\n",
        Path::new("bad.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("bad.toml"), "{err}");
    assert!(
        err.contains("stream[0].buffering_hints.interval_in_seconds"),
        "{err}"
    );
    assert!(err.contains("between 0 and 900"), "{err}");
}
