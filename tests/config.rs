//! The config file: the shipped example loads, defaults are documented ones,
//! and every problem is reported with its line, column and what is expected.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use patchkit_autopublish::config::{Config, ConfigError, KeyOrigin, KeySource, Problem};
use patchkit_autopublish::watcher::Take;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/pka/config.toml"))
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(_) => panic!("expected the config to be refused"),
        Err(err) => err.problems().to_vec(),
    }
}

const MINIMAL: &str = r#"
[[rule]]
name = "game"
folder = "/srv/builds/game"
app_secret = "abc123"
"#;

#[test]
fn the_shipped_example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/patchkit-autopublish.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.rules.len(), 1);
    let rule = &config.rules[0];
    assert_eq!(rule.name, "mygame-windows");
    assert_eq!(rule.takes(OsStr::new("build-1.2.zip")), Take::Yes);
    assert_eq!(rule.takes(OsStr::new("build-1.2.zip.part")), Take::No);
    assert_eq!(config.daemon.chunk_size, 10 * 1024 * 1024);
    assert_eq!(config.daemon.workers, 2);
    assert_eq!(
        config.patchkit.key_source,
        KeySource::Env("PATCHKIT_API_KEY".into())
    );
}

#[test]
fn defaults_fill_everything_left_out() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(
        config.patchkit.api_url.as_str(),
        "https://api2.patchkit.net/"
    );
    assert_eq!(
        config.patchkit.upload_url.as_str(),
        "https://api.patchkit.net/"
    );
    assert!(!config.patchkit.allow_insecure_http);
    assert_eq!(config.patchkit.request_timeout, Duration::from_secs(30));
    assert_eq!(
        config.patchkit.retry_give_up,
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        config.daemon.state_dir,
        PathBuf::from("/var/lib/patchkit-autopublish")
    );
    assert_eq!(config.daemon.settle, Duration::from_secs(5));
    assert_eq!(config.daemon.rescan, Duration::from_secs(600));
    assert_eq!(config.daemon.shutdown_timeout, Duration::from_secs(30));
    let rule = &config.rules[0];
    assert_eq!(rule.pattern, "*.zip");
    assert_eq!(rule.label.source(), "{stem}");
    assert!(rule.publish);
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let config = parse(
        r#"
[daemon]
state_dir = "state"
[[rule]]
name = "game"
folder = "drops/game"
app_secret = "abc"
"#,
    )
    .unwrap();
    assert_eq!(config.daemon.state_dir, PathBuf::from("/etc/pka/state"));
    assert_eq!(config.rules[0].folder, PathBuf::from("/etc/pka/drops/game"));
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let text = r#"[patchkit]
api_url = "ftp://example.com"
retry_cap = "soon"
colour = "blue"

[daemon]
workers = 0
chunk_size = "ten megs"
settle = 5

[[rule]]
name = "a b"
folder = "/x"
app_secret = "abc"
pattern = "[oops"

[[rule]]
folder = "/y"
"#;
    let found = problems(text);
    let lines: Vec<usize> = found.iter().map(|p| p.line).collect();
    for line in [2, 3, 4, 7, 8, 9, 12, 15, 17] {
        assert!(
            lines.contains(&line),
            "no problem on line {line}: {found:#?}"
        );
    }
    let text_of = |line: usize| {
        found
            .iter()
            .filter(|p| p.line == line)
            .map(|p| p.message.clone())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    assert!(text_of(2).contains("not supported"), "{}", text_of(2));
    assert!(text_of(3).contains("duration"), "{}", text_of(3));
    assert!(
        text_of(4).contains("unknown field `colour`"),
        "{}",
        text_of(4)
    );
    assert!(text_of(7).contains("from 1 to 64"), "{}", text_of(7));
    assert!(text_of(8).contains("\"10MiB\""), "{}", text_of(8));
    assert!(text_of(9).contains("[daemon]"), "{}", text_of(9));
    assert!(
        text_of(12).contains("not a valid rule name"),
        "{}",
        text_of(12)
    );
    assert!(text_of(15).contains("not a valid glob"), "{}", text_of(15));
    assert!(text_of(17).contains("missing `name`"), "{}", text_of(17));
    assert!(
        text_of(17).contains("missing `app_secret`"),
        "{}",
        text_of(17)
    );
    // Columns point at the value.
    let workers = found.iter().find(|p| p.line == 7).unwrap();
    assert_eq!(workers.column, 11);
}

#[test]
fn the_error_display_names_the_file_line_and_column() {
    let err = parse("[daemon]\nworkers = 100\n").unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("/etc/pka/config.toml:2:11:"), "{shown}");
    assert!(
        shown.contains("problems") || shown.contains("problem"),
        "{shown}"
    );
}

#[test]
fn syntax_errors_are_reported_with_their_position() {
    let found = problems("[daemon\nworkers = 2\n");
    assert_eq!(found[0].line, 1);
    assert!(found[0].message.starts_with("TOML syntax"), "{found:?}");
}

#[test]
fn an_inline_api_key_is_refused_without_echoing_it() {
    let text = format!("[patchkit]\napi_key = \"supersecretvalue\"\n{MINIMAL}");
    let err = parse(&text).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("must not be written in the config file"),
        "{shown}"
    );
    assert!(shown.contains("api_key_env"), "{shown}");
    assert!(shown.contains("patchkit-api-key"), "{shown}");
    assert!(!shown.contains("supersecretvalue"), "{shown}");
    assert_eq!(err.problems()[0].line, 2);
}

#[test]
fn plain_http_is_only_for_loopback_unless_allowed() {
    let with = |url: &str, allow: bool| {
        format!("[patchkit]\napi_url = \"{url}\"\nallow_insecure_http = {allow}\n{MINIMAL}")
    };
    assert!(parse(&with("http://127.0.0.1:8080", false)).is_ok());
    assert!(parse(&with("http://[::1]:8080", false)).is_ok());
    assert!(parse(&with("http://localhost:8080", false)).is_ok());
    let refused = problems(&with("http://patchkit.example.com", false));
    assert!(refused[0].message.contains("unencrypted"), "{refused:?}");
    assert!(parse(&with("http://patchkit.example.com", true)).is_ok());
    let creds = problems(&with("https://user:pw@example.com", false));
    assert!(creds[0].message.contains("credentials"), "{creds:?}");
}

#[test]
fn duplicate_rule_names_and_missing_rules_are_errors() {
    let dup = format!("{MINIMAL}{MINIMAL}");
    let found = problems(&dup);
    assert!(
        found.iter().any(|p| p.message.contains("already used")),
        "{found:?}"
    );
    let none = problems("[daemon]\nworkers = 2\n");
    assert!(none[0].message.contains("no [[rule]]"), "{none:?}");
}

#[test]
fn key_env_and_key_file_are_exclusive() {
    let text = format!("[patchkit]\napi_key_env = \"K\"\napi_key_file = \"/k\"\n{MINIMAL}");
    let found = problems(&text);
    assert!(
        found[0]
            .message
            .contains("both api_key_env and api_key_file"),
        "{found:?}"
    );
}

#[test]
fn the_key_is_read_from_credential_then_file_then_env() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, "from-file\n").unwrap();
    let cred_dir = dir.path().join("creds");
    std::fs::create_dir(&cred_dir).unwrap();

    let by_env = parse(&format!("[patchkit]\napi_key_env = \"MY_KEY\"\n{MINIMAL}")).unwrap();
    let (key, origin) = by_env
        .patchkit
        .load_key_with(|name| (name == "MY_KEY").then(|| "from-env".to_owned()))
        .unwrap();
    assert_eq!(key.expose(), "from-env");
    assert_eq!(origin, KeyOrigin::Env("MY_KEY".into()));
    let missing = by_env.patchkit.load_key_with(|_| None).unwrap_err();
    assert!(missing.to_string().contains("MY_KEY"), "{missing}");

    let by_file = parse(&format!(
        "[patchkit]\napi_key_file = {:?}\n{MINIMAL}",
        key_file.display().to_string()
    ))
    .unwrap();
    let (key, _) = by_file.patchkit.load_key_with(|_| None).unwrap();
    assert_eq!(key.expose(), "from-file");

    // A credential, when present, wins over the configured source.
    std::fs::write(cred_dir.join("patchkit-api-key"), "from-credential").unwrap();
    let creds = cred_dir.display().to_string();
    let (key, origin) = by_file
        .patchkit
        .load_key_with(|name| (name == "CREDENTIALS_DIRECTORY").then(|| creds.clone()))
        .unwrap();
    assert_eq!(key.expose(), "from-credential");
    assert!(matches!(origin, KeyOrigin::Credential(_)));

    std::fs::write(&key_file, "  \n").unwrap();
    let empty = by_file.patchkit.load_key_with(|_| None).unwrap_err();
    assert!(empty.to_string().contains("is empty"), "{empty}");
}

#[test]
fn config_debug_output_never_contains_a_key() {
    let config = parse(MINIMAL).unwrap();
    let (key, _) = config
        .patchkit
        .load_key_with(|_| Some("topsecret-123".to_owned()))
        .unwrap();
    let shown = format!("{config:?} {key:?} {key}");
    assert!(!shown.contains("topsecret-123"));
}

#[test]
fn settle_below_one_second_is_refused_globally_and_per_rule() {
    for text in [
        "[daemon]\nsettle = \"0s\"\n",
        "[daemon]\nsettle = \"500ms\"\n",
    ] {
        let found = problems(&format!("{text}{MINIMAL}"));
        assert!(
            found
                .iter()
                .any(|p| p.line == 2 && p.message.contains("at least 1s")),
            "{found:#?}"
        );
    }
    let found = problems(&format!("{MINIMAL}settle = \"200ms\"\n"));
    assert!(
        found.iter().all(|p| !p.message.contains("  ")),
        "{found:#?}"
    );
    assert!(
        found.iter().any(|p| p.message.contains("settle")
            && p.message.contains("at least 1s")
            && p.message.contains("[[rule]]")),
        "{found:#?}"
    );
    let config = parse(&format!("{MINIMAL}settle = \"20s\"\n")).unwrap();
    assert_eq!(config.rules[0].settle, Some(Duration::from_secs(20)));
    assert_eq!(parse(MINIMAL).unwrap().rules[0].settle, None);
}

/// Two rules on `folder_a` and `folder_b` with these patterns.
fn two_rules(folder_a: &Path, pattern_a: &str, folder_b: &Path, pattern_b: &str) -> String {
    format!(
        "[[rule]]\nname = \"a\"\nfolder = {:?}\npattern = {pattern_a:?}\napp_secret = \"a1\"\n\n\
         [[rule]]\nname = \"b\"\nfolder = {:?}\npattern = {pattern_b:?}\napp_secret = \"b1\"\n",
        folder_a.display().to_string(),
        folder_b.display().to_string()
    )
}

#[test]
fn rules_whose_folders_are_one_on_disk_or_whose_patterns_meet_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("builds");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("alias")).unwrap();
    let spelled = dir.path().join("other/../builds");
    for (b_folder, a_pattern, b_pattern) in [
        (dir.path().join("alias"), "*.zip", "*.zip"),
        (spelled.clone(), "*.zip", "*.zip"),
        (real.clone(), "a*.zip", "*b.zip"),
    ] {
        let found = problems(&two_rules(&real, a_pattern, &b_folder, b_pattern));
        assert!(
            found.iter().any(|p| p.message.contains("published twice")),
            "{} {a_pattern} {b_pattern}: {found:#?}",
            b_folder.display()
        );
    }
    // Patterns whose literal ends differ cannot meet.
    parse(&two_rules(&real, "*-win64.zip", &real, "*-mac.zip")).unwrap();
}
