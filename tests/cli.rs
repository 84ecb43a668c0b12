//! The command line against the real binary: `check` on good and bad
//! configs with a sandbox serving in this process, and `demo --once`.
//!
//! Each test runs its command with `assert_cmd` and a deadline, and checks
//! that nothing the command printed holds the API key.

mod harness;

use std::time::{Duration, Instant};

use assert_cmd::Command;
use harness::{Scenario, Setup, assert_no_key};

/// `check` talks to a loopback sandbox: a few requests per rule. Thirty
/// seconds is far beyond a healthy run on a loaded two-core machine.
const CHECK_LIMIT: Duration = Duration::from_secs(30);

/// `check` on the scenario's config, with a deadline; returns the exit code,
/// stdout and stderr.
fn check(s: &Scenario) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_patchkit-autopublish"))
        .arg("check")
        .arg("--config")
        .arg(&s.config)
        .env_remove("PATCHKIT_API_KEY")
        .env_remove("CREDENTIALS_DIRECTORY")
        .timeout(CHECK_LIMIT)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_no_key("check stdout", &stdout);
    assert_no_key("check stderr", &stderr);
    (output.status.code(), stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_each_rules_app_and_the_files_it_would_take() {
    let s = Setup::new(2).start().await;
    s.drop_zip(0, "Game-1.0", 1000);
    s.drop_zip(1, "Tool-2.0", 2000);
    s.drop_zip(1, "Tool-2.1", 3000);
    // Not a build: the rule's default pattern is `*.zip`.
    std::fs::write(s.dir.path().join("drops/app-1/notes.txt"), "x").unwrap();

    let (code, out, err) = check(&s);

    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("rule \"rule-0\": app \"app-0\""), "{out}");
    assert!(out.contains("rule \"rule-1\": app \"app-1\""), "{out}");
    assert!(out.contains("has 1 build file(s)"), "{out}");
    assert!(out.contains("has 2 build file(s)"), "{out}");
    for file in ["Game-1.0.zip", "Tool-2.0.zip", "Tool-2.1.zip"] {
        assert!(out.contains(file), "{file} not listed:\n{out}");
    }
    assert!(!out.contains("notes.txt"), "{out}");
    assert!(out.contains("all checks passed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_lists_every_problem_of_a_bad_config_with_its_place() {
    let s = Setup::new(1).start().await;
    s.edit_config(|text| {
        text.replacen("request_timeout = \"10s\"", "request_timout = \"10s\"", 1)
            .replacen("workers = 1", "workers = 0", 1)
            .replacen("chunk_size = \"256KiB\"", "chunk_size = \"1KiB\"", 1)
            .replacen("name = \"rule-0\"", "name = \"bad name!\"", 1)
            .replacen("label = \"{stem}\"", "label = \"{nope}\"", 1)
    });
    let text = std::fs::read_to_string(&s.config).unwrap();
    let at = |needle: &str| {
        let line = text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        format!("{}:{line}:", s.config.display())
    };

    let (code, out, err) = check(&s);

    assert_eq!(code, Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("has 5 problems"), "{err}");
    for (needle, column, what) in [
        ("request_timout", 1, "unknown field `request_timout`"),
        ("workers = 0", 11, "workers"),
        ("chunk_size", 14, "chunk_size"),
        ("bad name!", 8, "not a valid rule name"),
        ("{nope}", 9, "unknown placeholder {nope}"),
    ] {
        let place = format!("{}{column}: ", at(needle));
        let line = err
            .lines()
            .find(|l| l.trim_start().starts_with(&place))
            .unwrap_or_else(|| panic!("no problem at {place}:\n{err}"));
        assert!(line.contains(what), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_patchkit_refused_a_wrong_key() {
    // Two rules: the refusal is said once, not once per rule.
    let s = Setup::new(2).start().await;
    s.write_key("a-wrong-key");

    let (code, out, err) = check(&s);

    assert_ne!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let refused: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("PatchKit refused the API key"))
        .collect();
    assert_eq!(refused.len(), 1, "{out}");
    // It says where the key goes, not what it is.
    let key_file = s.dir.path().join("api-key");
    assert!(refused[0].contains(&*key_file.to_string_lossy()), "{out}");
    assert!(!out.contains("a-wrong-key") && !err.contains("a-wrong-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_an_unknown_app_secret() {
    let s = Setup::new(2).start().await;
    s.edit_config(|text| {
        text.replacen("app_secret = \"app-1\"", "app_secret = \"no-such-app\"", 1)
    });

    let (code, out, err) = check(&s);

    assert_eq!(code, Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("rule \"rule-1\": PatchKit has no app with secret no-such-app"),
        "{out}"
    );
    // The other rule is still checked.
    assert!(out.contains("rule \"rule-0\": app \"app-0\""), "{out}");
    assert!(err.contains("1 problem(s) found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_an_inline_key_without_echoing_it() {
    const INLINE: &str = "inline-secret-4d2f9";
    let s = Setup::new(1).start().await;
    s.edit_config(|text| {
        text.replacen(
            "[patchkit]\n",
            &format!("[patchkit]\napi_key = \"{INLINE}\"\n"),
            1,
        )
    });

    let (code, out, err) = check(&s);

    assert_eq!(code, Some(2), "stdout:\n{out}\nstderr:\n{err}");
    let place = format!("{}:2:1: [patchkit] api_key:", s.config.display());
    assert!(err.contains(&place), "{err}");
    for hint in ["api_key_env", "api_key_file", "credential"] {
        assert!(err.contains(hint), "{hint} not named:\n{err}");
    }
    assert!(
        !out.contains(INLINE) && !err.contains(INLINE),
        "{out}\n{err}"
    );
}

/// `demo --once` starts a sandbox and the daemon in its own process and
/// publishes a 6 MiB sample: about 10 s in a debug build, dominated by the
/// sandbox's 2 s processing and 1 s publishing and the 1 s settle.
#[test]
fn demo_once_publishes_the_sample_and_exits_0() {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_patchkit-autopublish"))
        .args(["demo", "--once"])
        .env_remove("JOURNAL_STREAM")
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    assert!(out.contains("is live"), "{out}");
    assert!(!out.contains("demo-key") && !err.contains("demo-key"));
    eprintln!("demo --once took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_foreign_draft_in_the_way_per_policy() {
    let s = Setup::new(1).start().await;
    let draft = s.create_draft("app-0", "made-by-hand").await;

    let (code, out, err) = check(&s);
    assert_eq!(code, Some(2), "stdout:\n{out}\nstderr:\n{err}");
    let line = out
        .lines()
        .find(|l| l.contains("made-by-hand"))
        .unwrap_or_else(|| panic!("the draft is not named:\n{out}"));
    assert!(line.starts_with("problem"), "{line}");
    assert!(
        line.contains(&format!("draft version {}", draft.id)),
        "{line}"
    );
    assert!(line.contains("take_over"), "{line}");

    s.set_rule_key(0, "existing_draft", r#""take_over""#);
    let (code, out, err) = check(&s);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("warning") && l.contains("takes it over")),
        "{out}"
    );
}
