//! Stories as the cache and the read views see them: revisions, versions, contexts.

use super::{cypher, field, GraphSink};
use crate::error::WriteError;
use neo4rs::query;
use projections::context::StoryContext;

impl GraphSink {
    /// The story's revision (commits that touched it), or `None` if the story does not exist.
    pub async fn story_rev(&self, gen: &str, id: &str) -> Result<Option<i64>, WriteError> {
        let q = query(cypher::STORY_REV).param("gen", gen).param("id", id);
        self.first_row(q)
            .await?
            .map(|r| field(&r, "rev"))
            .transpose()
    }

    /// The story's newest version key (`last_v`), or `None` if the story does not exist.
    pub async fn story_version(&self, gen: &str, id: &str) -> Result<Option<String>, WriteError> {
        let q = query(cypher::STORY_VERSION)
            .param("gen", gen)
            .param("id", id);
        self.first_row(q).await?.map(|r| field(&r, "v")).transpose()
    }

    /// Every story id of a generation, sorted.
    pub async fn story_ids(&self, gen: &str) -> Result<Vec<String>, WriteError> {
        let q = query(cypher::STORY_IDS).param("gen", gen);
        self.rows(q).await?.iter().map(|r| field(r, "id")).collect()
    }

    /// Reads the cached-context view of stories from the committed graph.
    pub async fn story_contexts(
        &self,
        gen: &str,
        ids: &[String],
    ) -> Result<Vec<StoryContext>, WriteError> {
        let q = query(cypher::STORY_CONTEXT)
            .param("gen", gen)
            .param("ids", ids.to_vec());
        let mut out = Vec::new();
        for row in self.rows(q).await? {
            let mut ctx: StoryContext = row.get("ctx").map_err(|e| WriteError::Neo4jRefused {
                code: "projector.ContextShape".into(),
                message: e.to_string(),
            })?;
            ctx.rev = field(&row, "rev")?;
            ctx.event_time_ms = field(&row, "t")?;
            out.push(ctx);
        }
        Ok(out)
    }
}
