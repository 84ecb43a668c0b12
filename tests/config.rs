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

/// One problem per line of `text`: (line, message).
fn messages(text: &str) -> Vec<(usize, usize, String)> {
    problems(text)
        .into_iter()
        .map(|p| (p.line, p.column, p.message))
        .collect()
}

#[test]
fn values_of_the_wrong_type_are_named_as_a_person_writes_them() {
    let text = r#"[patchkit]
allow_insecure_http = "yes"
request_timeout = 30
api_url = 8080

[daemon]
workers = "two"
log_keep = 1.5
chunk_size = 10
state_dir = false

[[rule]]
name = "game"
folder = "/srv/game"
app_secret = "abc"
publish = 1
ignore = "*.part"
existing_draft = true

[[notify]]
url = "http://127.0.0.1:9/hook"
events = "published"
rules = "game"
"#;
    let found = messages(text);
    let expect = [
        (
            2,
            23,
            "[patchkit] allow_insecure_http: expected true or false (without quotes), found \"yes\"",
        ),
        (
            3,
            19,
            "[patchkit] request_timeout: expected a duration in quotes, such as \"30s\" or \"2m 30s\", found 30",
        ),
        (4, 11, "[patchkit] api_url: expected a URL in quotes"),
        (
            7,
            11,
            "[daemon] workers: expected a whole number from 1 to 64, such as 2 (without quotes), found \"two\"",
        ),
        (
            8,
            12,
            "[daemon] log_keep: expected a whole number of daily files, such as 14 (without quotes), found 1.5",
        ),
        (
            9,
            14,
            "[daemon] chunk_size: expected a size in quotes, such as \"10MiB\", found 10",
        ),
        (10, 13, "[daemon] state_dir: expected a path in quotes"),
        (
            16,
            11,
            "[[rule]] \"game\" publish: expected true or false (without quotes), found 1",
        ),
        (
            17,
            10,
            "[[rule]] \"game\" ignore: expected a list of file name patterns, such as [\"*.part\", \".*\"], found \"*.part\"",
        ),
        (
            18,
            18,
            "[[rule]] \"game\" existing_draft: expected \"fail\" or \"take_over\", found true",
        ),
        (
            22,
            10,
            "[[notify]] #1 events: expected a list of event names, such as [\"published\", \"failed\"], found \"published\"",
        ),
        (
            23,
            9,
            "[[notify]] #1 rules: expected a list of rule names, such as [\"mygame-windows\"], found \"game\"",
        ),
    ];
    for (line, column, start) in expect {
        assert!(
            found
                .iter()
                .any(|(l, c, m)| *l == line && *c == column && m.starts_with(start)),
            "no problem at {line}:{column} starting {start:?}: {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
    for (_, _, message) in &found {
        for rust in ["i64", "a string", "a boolean", "a sequence", "invalid type"] {
            assert!(!message.contains(rust), "Rust's words in {message:?}");
        }
    }
}

#[test]
fn a_wrong_element_in_a_list_points_at_the_element() {
    let found = messages(&format!("{MINIMAL}ignore = [\"*.part\", 7]\n"));
    assert_eq!(found.len(), 1, "{found:#?}");
    let (line, column, message) = &found[0];
    assert_eq!((*line, *column), (6, 21));
    assert!(
        message.ends_with(
            "expected a list of file name patterns, such as [\"*.part\", \".*\"], found 7"
        ),
        "{message}"
    );
}

#[test]
fn a_bad_rule_adds_no_cascading_notify_problem() {
    let found = messages(
        r#"[[rule]]
name = "game"
folder = "/srv/game"
app_secret = "abc"
pattern = "[oops"

[[rule]]
name = "tools"
folder = "/srv/tools"
app_secret = "def"
publish = "no"

[[notify]]
url = "http://127.0.0.1:9/hook"
rules = ["game", "tools", "nope"]
"#,
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].2.contains("not a valid glob"), "{found:#?}");
    assert!(
        found[1].2.starts_with("[[rule]] \"tools\" publish"),
        "{found:#?}"
    );
    assert_eq!(
        found[2].2,
        "[[notify]] #1 rules: no [[rule]] is named \"nope\"; list rule names, or leave `rules` \
         out to notify for every rule"
    );
}

#[test]
fn a_state_dir_too_long_for_the_control_socket_is_refused() {
    let long = format!("/srv/{}", "d".repeat(95));
    let found = messages(&format!("[daemon]\nstate_dir = \"{long}\"\n{MINIMAL}"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!((found[0].0, found[0].1), (2, 13));
    assert!(
        found[0].2.contains(&format!(
            "the control socket {long}/control.sock would be 113 bytes long, but a Unix socket \
             path may have at most 107 bytes"
        )),
        "{found:#?}"
    );
    // The longest that fits is taken.
    let fits = format!("/srv/{}", "d".repeat(89));
    parse(&format!("[daemon]\nstate_dir = \"{fits}\"\n{MINIMAL}")).unwrap();
}

#[test]
fn an_unreadable_config_says_its_cause_once() {
    let err = Config::load(Path::new("/nonexistent/pka/config.toml")).unwrap_err();
    // `main` prints the whole chain.
    let shown = format!("{:#}", anyhow::Error::new(err));
    assert_eq!(
        shown,
        "cannot read config file /nonexistent/pka/config.toml: No such file or directory (os \
         error 2)"
    );
}
