//! `[[rule]]`: a watched folder, which files in it are builds, how they are
//! labelled, and what happens to the file afterwards.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::ffi::OsStr;

use globset::{Glob, GlobMatcher, GlobSet, GlobSetBuilder};
use regex::Regex;
use toml::Spanned;

use super::raw::RawRule;
use super::{ExistingDraft, Validator, Zero};
use crate::template::{Template, capture_names};
use crate::watcher::{NameFilter, Take, WatchSpec};

/// One `[[rule]]`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique name, used in logs, status and the store.
    pub name: String,
    /// The watched folder (absolute).
    pub folder: PathBuf,
    /// The file name glob as written.
    pub pattern: String,
    /// Which names are builds: the compiled pattern, the ignore list and
    /// `filename_regex` (whose named groups are placeholders of the
    /// templates).
    pub names: NameFilter,
    /// Also look in sub-folders.
    pub recursive: bool,
    /// Poll the folder at this interval instead of using inotify.
    pub poll: Option<Duration>,
    /// This rule's settle time; `None` means `[daemon] settle`.
    pub settle: Option<Duration>,
    /// The PatchKit app the builds go to.
    pub app_secret: String,
    /// The version label template.
    pub label: Template,
    /// Where the version's changelog comes from.
    pub changelog: Changelog,
    /// Publish after processing (`false` leaves a processed draft).
    pub publish: bool,
    /// What to do when the app already has a draft this daemon did not
    /// create for this build.
    pub existing_draft: ExistingDraft,
    /// What happens to the file once its version is live.
    pub after_publish: AfterPublish,
    /// What happens to the file when its build fails.
    pub on_failure: OnFailure,
    /// Channel apps of the group app (secrets or names) fed from each
    /// published version, in this order.
    pub channels: Vec<String>,
}

impl Rule {
    /// What the rule makes of a file name (not a path): the one test the
    /// watcher, intake and `check` share.
    pub fn takes(&self, file_name: &OsStr) -> Take {
        self.names.takes(file_name)
    }

    /// What the watcher needs of the rule.
    pub fn watch_spec(&self) -> WatchSpec {
        WatchSpec {
            rule: self.name.clone(),
            folder: self.folder.clone(),
            names: self.names.clone(),
            recursive: self.recursive,
            poll: self.poll,
            settle: self.settle,
        }
    }
}

/// Where a version's changelog comes from.
#[derive(Debug, Clone)]
pub enum Changelog {
    /// No changelog.
    None,
    /// This template.
    Inline(Template),
    /// A file next to the ZIP, named by this template (e.g.
    /// `{stem}.changelog.md`), read when the build is taken.
    Sidecar(Template),
}

/// What happens to a build file after its version went live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterPublish {
    /// Leave it; the store remembers it, so it is not published again.
    Keep,
    /// Delete it.
    Delete,
    /// Move it into this folder.
    Move(PathBuf),
}

/// What happens to a build file whose build failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// Leave it.
    Keep,
    /// Move it into this folder, with `<file>.error.txt` beside it.
    Move(PathBuf),
}

impl Validator<'_> {
    pub(super) fn rule(
        &mut self,
        raw: RawRule,
        removed: &BTreeSet<String>,
        context: &str,
        span: Range<usize>,
    ) -> Option<(Rule, Range<usize>)> {
        let here = span.start..span.start;
        let name = match &raw.name {
            None if removed.contains("name") => None,
            None => {
                self.problems.at(
                    here.clone(),
                    format!(
                        "{context}: missing `name`; give the rule a unique name such as \
                         \"mygame-windows\""
                    ),
                );
                None
            }
            Some(n) => {
                let valid = !n.get_ref().is_empty()
                    && n.get_ref()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if valid {
                    Some(n.get_ref().clone())
                } else {
                    self.problems.at(
                        n.span(),
                        format!(
                            "{context} name: {:?} is not a valid rule name; use letters, digits, \
                             '-', '_' and '.' only",
                            n.get_ref()
                        ),
                    );
                    None
                }
            }
        };
        let context = match &name {
            Some(n) => format!("[[rule]] {n:?}"),
            None => context.to_owned(),
        };
        let ctx = context.as_str();
        let folder = match &raw.folder {
            None if removed.contains("folder") => None,
            None => {
                self.problems.at(
                    here.clone(),
                    format!(
                        "{ctx}: missing `folder`; name the folder that receives the build ZIPs"
                    ),
                );
                None
            }
            Some(f) => self.path(f, &format!("{ctx} folder")),
        };
        let pattern = raw
            .pattern
            .as_ref()
            .map(|p| (p.get_ref().clone(), p.span()))
            .unwrap_or_else(|| ("*.zip".to_owned(), here.clone()));
        let matcher = self.glob(&pattern.0, pattern.1.clone(), &format!("{ctx} pattern"));
        let recursive = raw.recursive.map(|r| *r.get_ref()).unwrap_or(false);
        let poll = match raw.poll {
            None => Some(None),
            Some(p) => self
                .duration(Some(p), &format!("{ctx} poll"), "30s", Zero::Refused)
                .map(Some),
        };
        let settle = match raw.settle {
            None => Some(None),
            Some(s) => self.settle(Some(s), &format!("{ctx} settle")).map(Some),
        };
        let ignore = match &raw.ignore {
            None => Some(None),
            Some(list) => {
                let mut builder = GlobSetBuilder::new();
                let mut ok = true;
                for p in list.get_ref() {
                    match Glob::new(p) {
                        Ok(g) => {
                            builder.add(g);
                        }
                        Err(e) => {
                            ok = false;
                            self.problems.at(
                                list.span(),
                                format!(
                                    "{ctx} ignore: {p:?} is not a valid glob ({}); expected file \
                                     name patterns such as \"*.part\"",
                                    e.kind()
                                ),
                            );
                        }
                    }
                }
                if ok {
                    builder.build().ok().map(Some)
                } else {
                    None
                }
            }
        };
        let filename_regex = match &raw.filename_regex {
            None => Some(None),
            Some(r) => match Regex::new(r.get_ref()) {
                Ok(re) => Some(Some(re)),
                Err(e) => {
                    let detail = e.to_string();
                    let detail = detail.lines().last().unwrap_or("").trim();
                    self.problems.at(
                        r.span(),
                        format!(
                            "{ctx} filename_regex: not a valid regular expression ({detail}); \
                             expected e.g. \"^Game-(?P<version>[0-9.]+)\\\\.zip$\""
                        ),
                    );
                    None
                }
            },
        };
        let captures = filename_regex
            .as_ref()
            .and_then(|r| r.as_ref())
            .map(capture_names)
            .unwrap_or_default();
        let label = match &raw.label {
            None => Template::parse("{stem}", &captures).ok(),
            Some(l) if l.get_ref().trim().is_empty() => {
                self.problems.at(
                    l.span(),
                    format!("{ctx} label: the label template is empty; use e.g. \"{{stem}}\""),
                );
                None
            }
            Some(l) => self.template(l, &captures, &format!("{ctx} label")),
        };
        let changelog = match (&raw.changelog, &raw.changelog_file) {
            (Some(a), Some(_)) => {
                self.problems.at(
                    a.span(),
                    format!(
                        "{ctx}: both changelog and changelog_file are set; keep one (an inline \
                         template, or the name of a file next to the ZIP)"
                    ),
                );
                None
            }
            (Some(c), None) => self
                .template(c, &captures, &format!("{ctx} changelog"))
                .map(Changelog::Inline),
            (None, Some(f)) => {
                let t = self.template(f, &captures, &format!("{ctx} changelog_file"));
                if f.get_ref().contains('/') {
                    self.problems.at(
                        f.span(),
                        format!(
                            "{ctx} changelog_file: {:?} names a file next to the ZIP, so it \
                             cannot contain '/'; e.g. \"{{stem}}.changelog.md\"",
                            f.get_ref()
                        ),
                    );
                    None
                } else {
                    t.map(Changelog::Sidecar)
                }
            }
            (None, None) => Some(Changelog::None),
        };
        let app_secret = match &raw.app_secret {
            None if removed.contains("app_secret") => None,
            None => {
                self.problems.at(
                    here.clone(),
                    format!(
                        "{ctx}: missing `app_secret`; copy the app's secret from the PatchKit \
                         panel"
                    ),
                );
                None
            }
            Some(s) => {
                let secret = s.get_ref().trim();
                let valid = !secret.is_empty()
                    && secret
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
                if valid {
                    Some(secret.to_owned())
                } else {
                    self.problems.at(
                        s.span(),
                        format!(
                            "{ctx} app_secret: expected the app's secret as shown in the \
                             PatchKit panel (letters, digits, '-' and '_')"
                        ),
                    );
                    None
                }
            }
        };
        let publish = raw.publish.map(|p| *p.get_ref()).unwrap_or(true);
        let mut channels = Vec::new();
        if let Some(list) = &raw.channels {
            for name in list.get_ref() {
                let name = name.trim();
                if name.is_empty() {
                    self.problems.at(
                        list.span(),
                        format!(
                            "{ctx} channels: an empty name; list the channel apps' secrets or \
                             names, such as [\"beta\"]"
                        ),
                    );
                } else if channels.iter().any(|c| c == name) {
                    self.problems.at(
                        list.span(),
                        format!("{ctx} channels: {name:?} is listed twice"),
                    );
                } else {
                    channels.push(name.to_owned());
                }
            }
            if !publish && !channels.is_empty() {
                self.problems.at(
                    list.span(),
                    format!(
                        "{ctx} channels: channels are fed from the published group version, \
                         but this rule has publish = false; remove channels or publish"
                    ),
                );
            }
        }
        let existing_draft = match &raw.existing_draft {
            None => Some(ExistingDraft::Fail),
            Some(v) => match v.get_ref().as_str() {
                "fail" => Some(ExistingDraft::Fail),
                "take_over" => Some(ExistingDraft::TakeOver),
                other => {
                    self.problems.at(
                        v.span(),
                        format!(
                            "{ctx} existing_draft: {other:?} is not a policy; expected \"fail\" \
                             (stop with a message) or \"take_over\" (relabel the draft and upload \
                             over it)"
                        ),
                    );
                    None
                }
            },
        };
        let after_publish = self.disposition(
            raw.after_publish.as_ref(),
            raw.done_folder.as_ref(),
            ctx,
            ("after_publish", "done_folder"),
            &["keep", "delete", "move"],
        );
        let after_publish = after_publish.map(|d| match d {
            Disposition::Keep => AfterPublish::Keep,
            Disposition::Delete => AfterPublish::Delete,
            Disposition::Move(p) => AfterPublish::Move(p),
        });
        let on_failure = self
            .disposition(
                raw.on_failure.as_ref(),
                raw.failed_folder.as_ref(),
                ctx,
                ("on_failure", "failed_folder"),
                &["keep", "move"],
            )
            .map(|d| match d {
                Disposition::Move(p) => OnFailure::Move(p),
                _ => OnFailure::Keep,
            });
        // A moved file landing where this rule looks would be a new file to
        // it, and the same build would be published twice.
        let targets = [
            (
                "done_folder",
                raw.done_folder.as_ref(),
                match &after_publish {
                    Some(AfterPublish::Move(d)) => Some(d),
                    _ => None,
                },
            ),
            (
                "failed_folder",
                raw.failed_folder.as_ref(),
                match &on_failure {
                    Some(OnFailure::Move(d)) => Some(d),
                    _ => None,
                },
            ),
        ];
        for (key, spanned, target) in targets {
            if let (Some(dir), Some(folder), Some(ignore), Some(spanned)) =
                (target, &folder, &ignore, spanned)
                && takes_back(folder, recursive, ignore.as_ref(), dir)
            {
                self.problems.at(
                    spanned.span(),
                    format!(
                        "{ctx} {key}: {} is watched by this rule (its folder {}{}), so a file \
                         moved there would be taken and published again; choose a folder outside \
                         it, or one whose name `ignore` skips such as \".published\"",
                        dir.display(),
                        folder.display(),
                        if recursive { ", recursively" } else { "" },
                    ),
                );
            }
        }
        let name_span = raw.name.map(|n| n.span()).unwrap_or(here);
        Some((
            Rule {
                name: name?,
                folder: folder?,
                pattern: pattern.0,
                names: NameFilter {
                    matcher: matcher?,
                    ignore: ignore?,
                    regex: filename_regex?,
                },
                recursive,
                poll: poll?,
                settle: settle?,
                app_secret: app_secret?,
                label: label?,
                changelog: changelog?,
                publish,
                existing_draft: existing_draft?,
                after_publish: after_publish?,
                on_failure: on_failure?,
                channels,
            },
            name_span,
        ))
    }

    fn glob(&mut self, pattern: &str, span: Range<usize>, field: &str) -> Option<GlobMatcher> {
        match Glob::new(pattern) {
            Ok(glob) if !pattern.contains('/') => Some(glob.compile_matcher()),
            Ok(_) => {
                self.problems.at(
                    span,
                    format!(
                        "{field}: {pattern:?} contains '/'; the pattern matches file names \
                         inside the folder, such as \"*.zip\" or \"MyGame-*-win64.zip\""
                    ),
                );
                None
            }
            Err(err) => {
                self.problems.at(
                    span,
                    format!(
                        "{field}: {pattern:?} is not a valid glob ({}); expected a file name \
                         pattern such as \"*.zip\"",
                        err.kind()
                    ),
                );
                None
            }
        }
    }

    fn template(
        &mut self,
        value: &Spanned<String>,
        captures: &[String],
        field: &str,
    ) -> Option<Template> {
        match Template::parse(value.get_ref(), captures) {
            Ok(t) => Some(t),
            Err(e) => {
                self.problems.at(value.span(), format!("{field}: {e}"));
                None
            }
        }
    }

    /// Reads a disposition key and its folder (`after_publish` +
    /// `done_folder`, `on_failure` + `failed_folder`).
    fn disposition(
        &mut self,
        mode: Option<&Spanned<String>>,
        folder: Option<&Spanned<String>>,
        ctx: &str,
        (mode_key, folder_key): (&str, &str),
        allowed: &[&str],
    ) -> Option<Disposition> {
        let mode_name = mode.map(|m| m.get_ref().as_str()).unwrap_or("keep");
        if !allowed.contains(&mode_name) {
            let expected: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
            self.problems.at(
                mode.map(Spanned::span).unwrap_or(0..0),
                format!(
                    "{ctx} {mode_key}: {mode_name:?} is not an option; expected one of {}",
                    expected.join(", ")
                ),
            );
            return None;
        }
        match (mode_name, folder) {
            ("move", Some(f)) => self
                .path(f, &format!("{ctx} {folder_key}"))
                .map(Disposition::Move),
            ("move", None) => {
                self.problems.at(
                    mode.map(Spanned::span).unwrap_or(0..0),
                    format!(
                        "{ctx} {mode_key} = \"move\" needs {folder_key}: the folder the files \
                         are moved to"
                    ),
                );
                None
            }
            (_, Some(f)) => {
                self.problems.at(
                    f.span(),
                    format!(
                        "{ctx} {folder_key} is set but {mode_key} is {mode_name:?}; set \
                         {mode_key} = \"move\" to use it, or remove {folder_key}"
                    ),
                );
                None
            }
            ("delete", None) => Some(Disposition::Delete),
            _ => Some(Disposition::Keep),
        }
    }
}

/// Whether the rule watching `folder` would find files moved into `dir`
/// again: `dir` is the folder itself, or lies in its recursive tree with no
/// ignored folder name on the way (as the watcher walks it).
fn takes_back(folder: &Path, recursive: bool, ignore: Option<&GlobSet>, dir: &Path) -> bool {
    if dir == folder {
        return true;
    }
    let Ok(rel) = dir.strip_prefix(folder) else {
        return false;
    };
    let ignore = match ignore {
        Some(set) if !set.is_empty() => set,
        _ => crate::watcher::default_ignore(),
    };
    recursive
        && !rel
            .components()
            .any(|c| ignore.is_match(Path::new(c.as_os_str())))
}

enum Disposition {
    Keep,
    Delete,
    Move(PathBuf),
}

/// Whether two rules could both take the same file: the same folder as the
/// file system sees it (symlinks and `..` resolved, or the same device and
/// inode), or one inside the other's recursive tree; and patterns that may
/// share a name. The watcher refuses at run time any file two rules take
/// all the same, so this check may err only on the side of refusing.
pub(super) fn overlap(a: &Rule, b: &Rule) -> bool {
    let (fa, fb) = (seen_as(&a.folder), seen_as(&b.folder));
    let same_tree = fa == fb
        || same_inode(&a.folder, &b.folder)
        || (a.recursive && fb.starts_with(&fa))
        || (b.recursive && fa.starts_with(&fb));
    same_tree
        && (patterns_may_share(&a.pattern, &b.pattern)
            || a.names.matcher.is_match(sample_name(&b.pattern))
            || b.names.matcher.is_match(sample_name(&a.pattern)))
}

/// The folder as the file system resolves it; a folder that does not
/// exist yet is resolved as far as it does.
fn seen_as(folder: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(folder) {
        return real;
    }
    let mut clean = PathBuf::new();
    for part in folder.components() {
        match part {
            std::path::Component::ParentDir => {
                clean.pop();
            }
            std::path::Component::CurDir => {}
            other => clean.push(other),
        }
    }
    match (clean.parent(), clean.file_name()) {
        (Some(parent), Some(name)) if parent != clean => seen_as(parent).join(name),
        _ => clean,
    }
}

/// Whether both folders exist and are one (a bind mount, a hard-linked
/// path that canonicalisation does not reveal).
fn same_inode(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        false
    }
}

/// Whether two globs may match one name: unless their literal beginnings
/// (before the first wildcard) or literal ends (after the last) contradict
/// each other, assume they can (`a*.zip` and `*b.zip` both match
/// `ab.zip`).
fn patterns_may_share(a: &str, b: &str) -> bool {
    const WILD: &[char] = &['*', '?', '[', '{'];
    let prefix = |p: &str| p.split(WILD).next().unwrap_or("").to_owned();
    let suffix = |p: &str| {
        if p.contains(WILD) {
            p.rsplit(['*', '?', ']', '}'])
                .next()
                .unwrap_or("")
                .to_owned()
        } else {
            p.to_owned()
        }
    };
    let (pa, pb) = (prefix(a), prefix(b));
    let (sa, sb) = (suffix(a), suffix(b));
    let literal = |p: &str| !p.contains(WILD);
    if literal(a) && literal(b) {
        return a == b;
    }
    (pa.starts_with(&pb) || pb.starts_with(&pa)) && (sa.ends_with(&sb) || sb.ends_with(&sa))
}

fn sample_name(pattern: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' | '?' => out.push('x'),
            '[' => {
                // The first character the class allows.
                let mut first = None;
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    if first.is_none() && c != '!' && c != '^' {
                        first = Some(c);
                    }
                }
                out.push(first.unwrap_or('x'));
            }
            '{' => {
                // The first alternative.
                let mut alt = String::new();
                let mut done = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                    if c == ',' {
                        done = true;
                    }
                    if !done {
                        alt.push(c);
                    }
                }
                out.push_str(&alt);
            }
            '\\' => {
                if let Some(c) = chars.next() {
                    out.push(c);
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_share_a_name_unless_their_literal_ends_disagree() {
        for (a, b) in [
            ("a*.zip", "*b.zip"),
            ("*.zip", "game.zip"),
            ("*", "x*"),
            ("Game-*-win64.zip", "Game-1.*"),
        ] {
            assert!(patterns_may_share(a, b), "{a} {b}");
        }
        for (a, b) in [
            ("*-win64.zip", "*-mac.zip"),
            ("win-*.zip", "mac-*.zip"),
            ("game.zip", "other.zip"),
            ("game.zip", "*-win.zip"),
        ] {
            assert!(!patterns_may_share(a, b), "{a} {b}");
        }
    }

    #[test]
    fn folders_are_compared_as_the_file_system_resolves_them() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("builds");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("alias")).unwrap();
        let real_seen = seen_as(&real);
        assert_eq!(seen_as(&dir.path().join("alias")), real_seen);
        assert_eq!(seen_as(&dir.path().join("builds/../builds")), real_seen);
        assert_eq!(
            seen_as(&dir.path().join("alias/later")),
            real_seen.join("later"),
            "a folder that does not exist yet resolves through its parent"
        );
        assert!(same_inode(&real, &dir.path().join("alias")));
    }
}
