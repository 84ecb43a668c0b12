//! Whose is the app's draft, and what to do about it: the one planning
//! function used by the create-version stage and by `check`.
//!
//! PatchKit allows one draft per app and a draft carries no owner, so a
//! label proves nothing: a person may have made a draft with the very label
//! a build will get. A draft is this build's own only when the store proves
//! it: the build recorded its intent to create a version
//! (`BuildState::CreatingVersion`) *before* the request, and the draft was
//! created after that record (its id is above the highest id listed then)
//! with this build's label. A draft recorded by another of this daemon's
//! builds is known by that record. Every other draft is "in the way" and
//! follows the rule's `existing_draft`.
//!
//! Pure: knows versions, labels and what the store says, nothing about HTTP
//! or sled.

use crate::config::ExistingDraft;
use crate::patchkit::{AppVersion, MissingKey};

/// What this daemon's store says about a version of the app: which build
/// recorded it and where that build stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownDraft {
    /// The version the build recorded as its own.
    pub version_id: u64,
    /// The build's id, for messages.
    pub build: String,
    /// The build's rule, for messages.
    pub rule: String,
    /// The build's label: the draft must still carry it to be that build's
    /// (PatchKit reuses the ids of versions it forgot).
    pub label: String,
    /// Where that build stands.
    pub owner: Owner,
}

/// Where the build that recorded a draft stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Failed or cancelled: nobody will ever publish its draft, so the
    /// app's next build reuses it.
    Abandoned,
    /// Processed and kept as a draft because its rule does not publish: a
    /// person is meant to publish it.
    Kept,
    /// Still being worked on.
    Active,
}

/// The decision about the app's draft.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DraftPlan<'a> {
    /// No open draft: create one (after recording the intent).
    Create,
    /// The draft this build's recorded intent created: use it as it is.
    Adopt(&'a AppVersion),
    /// A draft left by one of this daemon's failed or cancelled builds:
    /// relabel it and use it.
    Reuse(&'a AppVersion, &'a KnownDraft),
    /// Someone else's draft, taken over as `existing_draft = "take_over"`
    /// asks: relabel it and upload over it.
    TakeOver(&'a AppVersion),
    /// The draft is being published, or another of this daemon's builds is
    /// working on it: wait and plan again.
    Wait(&'a AppVersion, Option<&'a KnownDraft>),
    /// A draft this build may not touch (`existing_draft = "fail"`), with
    /// the build that kept it, when it is one of ours.
    InTheWay(&'a AppVersion, Option<&'a KnownDraft>),
}

/// Plans what to do about the app's draft.
///
/// `versions` is the app's version list; `label` the build's label;
/// `intent` the `after_id` of the build's recorded intent to create a
/// version (`None` when it recorded none); `known` what the store says
/// about the app's versions (other builds only). Fails when a version lacks
/// the `draft` key, which the decision cannot do without.
pub fn plan_draft<'a>(
    versions: &'a [AppVersion],
    label: &str,
    intent: Option<u64>,
    known: &'a [KnownDraft],
    existing_draft: ExistingDraft,
) -> Result<DraftPlan<'a>, MissingKey> {
    let mut open = Vec::new();
    for v in versions {
        if v.is_open_draft()? {
            open.push(v);
        }
    }
    // PatchKit allows one draft per app; should it ever show more, the
    // oldest is the one in the way.
    open.sort_by_key(|v| v.id);
    let Some(draft) = open.first().copied() else {
        return Ok(DraftPlan::Create);
    };
    if intent.is_some_and(|after_id| draft.id > after_id) && draft.label == label {
        return Ok(DraftPlan::Adopt(draft));
    }
    let record = known
        .iter()
        .find(|k| k.version_id == draft.id && k.label == draft.label);
    if draft.pending_publish == Some(true) {
        return Ok(DraftPlan::Wait(draft, record));
    }
    Ok(match (record, existing_draft) {
        (Some(k), _) if k.owner == Owner::Abandoned => DraftPlan::Reuse(draft, k),
        (Some(k), _) if k.owner == Owner::Active => DraftPlan::Wait(draft, Some(k)),
        (_, ExistingDraft::TakeOver) => DraftPlan::TakeOver(draft),
        (record, ExistingDraft::Fail) => DraftPlan::InTheWay(draft, record),
    })
}

/// The operator's sentence about a draft in the way.
pub fn in_the_way_reason(
    secret: &str,
    draft: &AppVersion,
    record: Option<&KnownDraft>,
    rule: &str,
) -> String {
    let whose = match record {
        Some(k) => format!(
            " (left as a draft by build {} of rule {:?}, which does not publish)",
            k.build, k.rule
        ),
        None => " (not created by this build: made by a person, another tool, or before \
                  this daemon recorded its intent)"
            .to_owned(),
    };
    format!(
        "app {secret} already has draft version {} {:?}{whose}, and PatchKit allows one draft \
         per app. Publish or delete that draft in the PatchKit panel, or set existing_draft = \
         \"take_over\" in rule {rule:?}",
        draft.id, draft.label
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn version(id: u64, label: &str, draft: bool) -> AppVersion {
        serde_json::from_value(json!({
            "id": id, "label": label, "draft": draft, "published": !draft,
            "pending_publish": false, "has_processing_error": false
        }))
        .unwrap()
    }

    fn known(id: u64, owner: Owner) -> KnownDraft {
        KnownDraft {
            version_id: id,
            build: "b1".into(),
            rule: "r".into(),
            label: "x".into(),
            owner,
        }
    }

    #[test]
    fn no_draft_means_create() {
        let vs = [version(1, "1.0", false)];
        assert_eq!(
            plan_draft(&vs, "1.1", None, &[], ExistingDraft::Fail),
            Ok(DraftPlan::Create)
        );
    }

    #[test]
    fn a_same_label_draft_is_ours_only_after_our_intent() {
        let vs = [version(1, "1.0", false), version(2, "1.1", true)];
        // No intent: a person's draft with our label is in the way.
        assert_eq!(
            plan_draft(&vs, "1.1", None, &[], ExistingDraft::Fail),
            Ok(DraftPlan::InTheWay(&vs[1], None))
        );
        // The intent was recorded after draft 2 existed: not ours either.
        assert_eq!(
            plan_draft(&vs, "1.1", Some(2), &[], ExistingDraft::Fail),
            Ok(DraftPlan::InTheWay(&vs[1], None))
        );
        // Created after the intent, with our label: ours.
        assert_eq!(
            plan_draft(&vs, "1.1", Some(1), &[], ExistingDraft::Fail),
            Ok(DraftPlan::Adopt(&vs[1]))
        );
        // Created after the intent with another label: someone else's.
        assert_eq!(
            plan_draft(&vs, "1.2", Some(1), &[], ExistingDraft::TakeOver),
            Ok(DraftPlan::TakeOver(&vs[1]))
        );
    }

    #[test]
    fn drafts_recorded_by_our_builds_follow_their_owner() {
        let vs = [version(3, "x", true)];
        let abandoned = [known(3, Owner::Abandoned)];
        assert_eq!(
            plan_draft(&vs, "y", None, &abandoned, ExistingDraft::Fail),
            Ok(DraftPlan::Reuse(&vs[0], &abandoned[0]))
        );
        let kept = [known(3, Owner::Kept)];
        assert_eq!(
            plan_draft(&vs, "x", None, &kept, ExistingDraft::Fail),
            Ok(DraftPlan::InTheWay(&vs[0], Some(&kept[0])))
        );
        let active = [known(3, Owner::Active)];
        assert_eq!(
            plan_draft(&vs, "y", None, &active, ExistingDraft::TakeOver),
            Ok(DraftPlan::Wait(&vs[0], Some(&active[0])))
        );
        // The same id with another label: PatchKit forgot our draft and
        // someone made a new one, which is not ours to reuse.
        let other = [version(3, "by hand", true)];
        assert_eq!(
            plan_draft(&other, "y", None, &abandoned, ExistingDraft::Fail),
            Ok(DraftPlan::InTheWay(&other[0], None))
        );
    }

    #[test]
    fn a_draft_being_published_is_waited_for() {
        let mut v = version(4, "x", true);
        v.pending_publish = Some(true);
        let vs = [v];
        assert!(matches!(
            plan_draft(&vs, "y", None, &[], ExistingDraft::TakeOver),
            Ok(DraftPlan::Wait(_, None))
        ));
    }

    #[test]
    fn a_version_without_the_draft_key_cannot_be_planned() {
        let vs: Vec<AppVersion> = vec![serde_json::from_value(json!({"id": 1})).unwrap()];
        assert_eq!(
            plan_draft(&vs, "x", None, &[], ExistingDraft::Fail),
            Err(MissingKey("draft"))
        );
    }
}
