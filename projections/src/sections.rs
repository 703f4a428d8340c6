//! The parts of a story view a change feed names (`what` on `/v1/changes`), and a digest of
//! each, so the cache writer can tell which parts a new render changed.
//!
//! A part changed when its digest differs from the one stored with the previous render:
//! exact whatever events, redeliveries or repairs led there, and a pure function of the view.

use crate::context::{render, StoryContext};
use sha2::{Digest, Sha256};

/// A part of the story view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    /// Title, description, creator.
    Story,
    /// The phase and its history.
    Phase,
    /// Plans (without their approvals).
    Plans,
    /// Plan approvals.
    Approvals,
    Tasks,
    Decisions,
    Milestones,
}

impl Section {
    /// Every section, in the order the feed lists them.
    pub const ALL: [Section; 7] = [
        Section::Story,
        Section::Phase,
        Section::Plans,
        Section::Approvals,
        Section::Tasks,
        Section::Decisions,
        Section::Milestones,
    ];

    /// The name on the feed (`what`) and in `?what=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Story => "story",
            Section::Phase => "phase",
            Section::Plans => "plans",
            Section::Approvals => "approvals",
            Section::Tasks => "tasks",
            Section::Decisions => "decisions",
            Section::Milestones => "milestones",
        }
    }

    /// The section a name denotes, if any.
    ///
    /// ```
    /// use projections::sections::Section;
    /// assert_eq!(Section::parse("decisions"), Some(Section::Decisions));
    /// assert_eq!(Section::parse("timeline"), None);
    /// ```
    pub fn parse(s: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// One digest per section of the canonical render, in [`Section::ALL`] order (16 hex digits
/// each: enough to tell two renders of one story apart).
pub fn digests(ctx: &StoryContext) -> [String; 7] {
    let c: StoryContext =
        serde_json::from_slice(&render(ctx)).expect("a rendered context parses back");
    let plans: Vec<_> = c
        .plans
        .iter()
        .map(|p| (&p.plan_id, p.version, &p.summary, p.created_at_ms))
        .collect();
    let approvals: Vec<_> = c.plans.iter().map(|p| (&p.plan_id, &p.approvals)).collect();
    let json = |v: serde_json::Value| {
        let h = Sha256::digest(v.to_string().as_bytes());
        hex::encode(&h[..8])
    };
    use serde_json::json;
    [
        json(json!([c.title, c.description, c.created_by])),
        json(json!([c.phase, c.phase_history])),
        json(json!(plans)),
        json(json!(approvals)),
        json(json!(c.tasks)),
        json(json!(c.decisions)),
        json(json!(c.milestones)),
    ]
}

/// The digests of a view with nothing in it: what a story's first render is compared with.
pub fn empty_digests() -> [String; 7] {
    let empty: StoryContext = serde_json::from_value(serde_json::json!({
        "story_id": "", "title": null, "description": null, "phase": null, "created_by": null,
        "phase_history": [], "plans": [], "tasks": [], "decisions": [], "milestones": [],
        "last_v": ""
    }))
    .expect("the empty view parses");
    digests(&empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{DecisionView, StoryContext};

    fn ctx() -> StoryContext {
        serde_json::from_value(serde_json::json!({
            "story_id": "US-1", "title": "t", "description": null, "phase": "DRAFT",
            "created_by": null, "phase_history": [], "plans": [], "tasks": [],
            "decisions": [], "milestones": [], "last_v": ""
        }))
        .unwrap()
    }

    #[test]
    fn only_the_changed_section_moves() {
        let a = ctx();
        let mut b = a.clone();
        b.decisions.push(DecisionView {
            decision_id: "D-1".into(),
            task_id: None,
            title: Some("x".into()),
            rationale: None,
            decided_by: None,
            decided_at_ms: Some(1),
        });
        b.rev = 9; // not part of the view
        let (da, db) = (digests(&a), digests(&b));
        let changed: Vec<_> = Section::ALL
            .iter()
            .zip(da.iter().zip(db.iter()))
            .filter(|(_, (x, y))| x != y)
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(changed, vec![Section::Decisions]);
    }
}
