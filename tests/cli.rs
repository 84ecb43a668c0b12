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

/// `check` warns about an API key file every user can read, and not about
/// one only its owner can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_a_key_file_every_user_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new(1).start().await;
    let key_file = s.dir.path().join("api-key");
    let warning = "can be read by every user (mode 644)";
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = check(&s);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains(warning) || err.contains(warning),
        "{out}\n{err}"
    );
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, err) = check(&s);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(!out.contains("can be read by every user"), "{out}");
    assert!(!err.contains("can be read by every user"), "{err}");
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
    // Listed as a file the rule does not take, not as a build.
    assert!(
        out.contains("1 other file(s) not matching \"*.zip\", not taken: notes.txt"),
        "{out}"
    );
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

/// Runs the binary with `args` (no config from the environment) and returns
/// the exit code, stdout and stderr.
fn bin(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_patchkit-autopublish"))
        .args(args)
        .env_remove("PATCHKIT_AUTOPUBLISH_CONFIG")
        .env_remove("PATCHKIT_API_KEY")
        .env_remove("CREDENTIALS_DIRECTORY")
        .timeout(CHECK_LIMIT)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn completions_complete_every_command_in_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = bin(&["completions", shell]);
        assert_eq!(code, Some(0), "{shell}: {err}");
        for word in ["run", "check", "status", "retry", "cancel", "--as-service"] {
            assert!(
                out.contains(word),
                "{shell} completion lacks {word}:\n{out}"
            );
        }
    }
    let (code, _, err) = bin(&["completions", "tcsh"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("possible values"), "{err}");
}

/// What bash offers after `line` (the last word is the one completed).
fn bash_completes(script: &str, line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let program = format!(
        "{script}\nCOMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; \
         COMP_POINT=${{#COMP_LINE}}; _patchkit__autopublish patchkit-autopublish '{cur}' '{prev}'; \
         echo \"${{COMPREPLY[*]}}\"",
        words = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        cword = words.len() - 1,
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(program)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn bash_completes_commands_and_their_options() {
    let (_, script, _) = bin(&["completions", "bash"]);
    assert_eq!(bash_completes(&script, "patchkit-autopublish ch"), "check");
    assert_eq!(
        bash_completes(&script, "patchkit-autopublish check --as"),
        "--as-service"
    );
    let shells = bash_completes(&script, "patchkit-autopublish completions ");
    for shell in ["bash", "zsh", "fish"] {
        assert!(
            shells.split(' ').any(|s| s == shell),
            "{shell} not offered: {shells}"
        );
    }
}

#[test]
fn man_prints_the_page_of_the_program_and_of_each_command() {
    let (code, out, err) = bin(&["man"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(".TH patchkit-autopublish 1"), "{out}");
    assert!(out.contains("patchkit\\-autopublish\\-check(1)"), "{out}");
    let (code, out, err) = bin(&["man", "check"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(".TH patchkit-autopublish-check 1"), "{out}");
    assert!(out.contains("\\-\\-as\\-service"), "{out}");
    let (code, _, err) = bin(&["man", "publish"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("no command \"publish\"") && err.contains("run, check"),
        "{err}"
    );
}

/// The Debian package ships the copies in packaging/; they must be what the
/// binary prints, or the package documents another command line.
#[test]
fn packaged_completions_and_man_pages_are_what_the_binary_prints() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let mut expected: Vec<(String, Vec<&str>)> = vec![
        (
            "completions/patchkit-autopublish.bash".into(),
            vec!["completions", "bash"],
        ),
        (
            "completions/_patchkit-autopublish".into(),
            vec!["completions", "zsh"],
        ),
        (
            "completions/patchkit-autopublish.fish".into(),
            vec!["completions", "fish"],
        ),
        ("man/patchkit-autopublish.1".into(), vec!["man"]),
    ];
    let commands = [
        "run",
        "check",
        "sandbox",
        "demo",
        "status",
        "retry",
        "cancel",
        "completions",
        "man",
        "store",
    ];
    for cmd in commands {
        expected.push((
            format!("man/patchkit-autopublish-{cmd}.1"),
            vec!["man", cmd],
        ));
    }
    let shipped = std::fs::read_dir(root.join("man")).unwrap().count();
    assert_eq!(
        shipped,
        commands.len() + 1,
        "packaging/man has {shipped} pages; run packaging/generate"
    );
    for (file, args) in expected {
        let (code, out, err) = bin(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        let copy = std::fs::read_to_string(root.join(&file)).unwrap_or_default();
        assert!(
            copy == out,
            "packaging/{file} differs from `patchkit-autopublish {}`; run packaging/generate",
            args.join(" ")
        );
    }
}

/// A unit file like the packaged one, loading the credential from `cred`
/// and running `config`.
fn write_unit(
    dir: &std::path::Path,
    cred: &std::path::Path,
    config: &std::path::Path,
) -> std::path::PathBuf {
    let unit = dir.join("patchkit-autopublish.service");
    std::fs::write(
        &unit,
        format!(
            "[Unit]\nDescription=test\n\n[Service]\nType=notify-reload\n\
             ExecStart=/usr/bin/patchkit-autopublish run --config {}\n\
             LoadCredential=patchkit-api-key:{}\n",
            config.display(),
            cred.display()
        ),
    )
    .unwrap();
    unit
}

/// `check` as the service: the key the shell would use is wrong, the one in
/// the credential file the unit names is right, and only the latter counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_as_service_reads_the_key_from_the_credential_the_unit_loads() {
    let s = Setup::new(1).start().await;
    s.write_key("not-the-key");
    let cred = s.dir.path().join("credential");
    std::fs::write(&cred, format!("{}\n", harness::KEY)).unwrap();
    std::fs::set_permissions(&cred, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let unit = write_unit(s.dir.path(), &cred, &s.config);
    let config = s.config.to_str().unwrap();

    let (code, out, err) = bin(&["check", "--config", config]);
    assert_eq!(code, Some(2), "the shell's key is wrong:\n{out}\n{err}");

    let (code, out, err) = bin(&[
        "check",
        "--config",
        config,
        "--as-service",
        "--unit",
        unit.to_str().unwrap(),
    ]);
    assert_no_key("stdout", &out);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains(&format!("ok       unit {}", unit.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "API key read from the credential file {}",
            cred.display()
        )),
        "{out}"
    );
    assert!(!out.contains("warning"), "{out}");
    assert!(out.contains("all checks passed"), "{out}");

    // The same file given directly.
    let (code, out, err) = bin(&[
        "check",
        "--config",
        config,
        "--credential",
        cred.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("given with --credential"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_as_service_names_the_missing_credential_and_the_unit_that_wants_it() {
    let s = Setup::new(1).start().await;
    let cred = s.dir.path().join("no-such-key");
    let unit = write_unit(s.dir.path(), &cred, &s.dir.path().join("other.toml"));
    // A drop-in beside the unit moves the credential; it is read too.
    let dropins = s.dir.path().join("patchkit-autopublish.service.d");
    std::fs::create_dir(&dropins).unwrap();
    let moved = s.dir.path().join("moved-key");
    std::fs::write(
        dropins.join("key.conf"),
        format!(
            "[Service]\nLoadCredential=patchkit-api-key:{}\n",
            moved.display()
        ),
    )
    .unwrap();

    let (code, out, err) = bin(&[
        "check",
        "--config",
        s.config.to_str().unwrap(),
        "--as-service",
        "--unit",
        unit.to_str().unwrap(),
    ]);

    assert_eq!(code, Some(2), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains(&dropins.join("key.conf").display().to_string()),
        "{out}"
    );
    let problem = out
        .lines()
        .find(|l| l.starts_with("problem"))
        .unwrap_or_default();
    assert!(
        problem.contains(&format!(
            "cannot read the credential file {}",
            moved.display()
        )),
        "{out}"
    );
    assert!(problem.contains("No such file or directory"), "{problem}");
    assert!(
        out.contains("the unit runs the config") && out.contains("other.toml"),
        "{out}"
    );

    // Readable by all: it works, with a warning.
    std::fs::write(&moved, harness::KEY).unwrap();
    std::fs::set_permissions(&moved, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, out, _) = bin(&[
        "check",
        "--config",
        s.config.to_str().unwrap(),
        "--as-service",
        "--unit",
        unit.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("may be read by other users (mode 644)"),
        "{out}"
    );
}

/// Under `Type=notify-reload` systemd sends SIGHUP and waits for
/// RELOADING=1 (with MONOTONIC_USEC) and then READY=1; a refused config
/// still ends the reload with READY=1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_is_announced_to_systemd_and_ended_with_ready() {
    use std::os::unix::net::UnixDatagram;
    let s = Setup::new(1).start().await;
    let socket_path = s.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = s.dir.path().join("daemon.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_patchkit-autopublish"))
        .arg("run")
        .arg("--config")
        .arg(&s.config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env_remove("WATCHDOG_USEC")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    // Datagrams until one holds `field`, skipping STATUS= updates.
    let next = |field: &str| -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {field} from the daemon: {e}\n{}", logs()));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l.starts_with(field)) {
                return msg;
            }
        }
    };
    let hup = || {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    // CLOCK_MONOTONIC, the clock systemd compares MONOTONIC_USEC with.
    let monotonic_now = || match sd_notify::NotifyState::monotonic_usec_now().unwrap() {
        sd_notify::NotifyState::MonotonicUsec(usec) => usec,
        _ => unreachable!(),
    };

    next("READY=1");
    let before = monotonic_now();
    hup();
    let reloading = next("RELOADING=1");
    let usec: i128 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .unwrap();
    assert!(
        usec >= before,
        "MONOTONIC_USEC {usec} is before the signal ({before})"
    );
    next("READY=1");
    assert!(logs().contains("config reloaded"), "{}", logs());

    // A broken config: refused, and the reload still ends.
    std::fs::write(&s.config, "[daemon]\nworkers = 0\n").unwrap();
    hup();
    next("RELOADING=1");
    next("READY=1");
    assert!(logs().contains("the new config is refused"), "{}", logs());

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let deadline = Instant::now() + CHECK_LIMIT;
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not stop\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_answers_within_seconds_when_patchkit_is_unreachable_naming_host_and_cause() {
    let s = Setup::new(2).start().await;
    let closed = harness::ClosedPort::new();
    let url = format!("http://{}", closed.addr());
    s.edit_config(|text| {
        text.lines()
            .map(|line| {
                if line.starts_with("api_url") {
                    format!("api_url = {url:?}")
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    let started = Instant::now();
    let out = s.run_cli(&["check"]);
    let took = started.elapsed();
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(took < Duration::from_secs(15), "check took {took:?}");
    let problem = out
        .stdout
        .lines()
        .find(|l| l.starts_with("problem"))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(
        problem.contains("cannot reach PatchKit at 127.0.0.1"),
        "{problem}"
    );
    assert!(problem.contains("Connection refused"), "{problem}");
    assert_eq!(
        out.stdout.matches("cannot reach PatchKit").count(),
        1,
        "said once, not once per rule: {out:?}"
    );
}

/// `status` on a state directory where nothing ever ran (a mistyped
/// `--state-dir`) shows no builds, exits 0 and says on stderr why.
#[test]
fn status_of_a_state_dir_where_nothing_ran_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-state");
    let (code, out, err) = bin(&["status", "--state-dir", missing.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("no build store in") && err.contains(missing.to_str().unwrap()),
        "{err}"
    );
    assert!(!missing.exists(), "status created {}", missing.display());
    let (code, json, _) = bin(&["status", "--json", "--state-dir", missing.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert_eq!(json.trim(), "[]", "{out}");
}
