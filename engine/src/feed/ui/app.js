// The live story viewer: plain JavaScript, no build step. The list at #/ and a story at
// #/story/ID are read from the read API, then kept current by the change feed: each
// `story.changed` event re-reads what it names, and the read serves at least that revision.
"use strict";

const main = document.getElementById("main");
const crumb = document.getElementById("crumb");
const statusEl = document.getElementById("status");
let stories = new Map(); // story_id -> row of /v1/stories
let current = null;      // the story id shown, or null for the list
let lastChange = new Map(); // story_id -> {what, at}

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const time = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–");
const json = async (path) => {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: ${r.status} ${(await r.json().catch(() => ({}))).message ?? ""}`);
  return r.json();
};

function setStatus(text, cls) {
  statusEl.textContent = text;
  statusEl.className = "status " + (cls || "");
}

// ---- the list ----
async function loadList() {
  const rows = await json("/v1/stories?limit=10000");
  stories = new Map(rows.map((r) => [r.story_id, r]));
}

function renderList(flash) {
  crumb.textContent = "stories";
  const rows = [...stories.values()].sort((a, b) => (b.last_event_time_ms ?? 0) - (a.last_event_time_ms ?? 0) || a.story_id.localeCompare(b.story_id));
  if (!rows.length) {
    main.innerHTML = `<p class="muted">No stories yet. They appear here as soon as they are projected.</p>`;
    return;
  }
  main.innerHTML = `<h1>Stories <small>${rows.length}</small></h1>
  <table id="stories"><thead><tr><th>Story</th><th>Title</th><th>Phase</th><th>Last change</th><th>Changed</th><th>Rev</th></tr></thead><tbody>
  ${rows.map((r) => `<tr data-story="${esc(r.story_id)}" class="${r.story_id === flash ? "flash" : ""}">
    <td><a href="#/story/${encodeURIComponent(r.story_id)}">${esc(r.story_id)}</a></td>
    <td>${esc(r.title)}</td><td><span class="phase">${esc(r.phase ?? "–")}</span></td>
    <td>${time(r.last_event_time_ms)}</td><td class="muted">${esc((lastChange.get(r.story_id)?.what ?? []).join(", "))}</td>
    <td class="muted">${r.revision}</td></tr>`).join("")}
  </tbody></table>`;
}

// ---- a story ----
function section(title, body, id) {
  return `<section id="${id}"><h2>${title}</h2>${body}</section>`;
}
function table(head, rows) {
  if (!rows.length) return `<p class="muted">None yet.</p>`;
  return `<table><thead><tr>${head.map((h) => `<th>${h}</th>`).join("")}</tr></thead><tbody>${rows
    .map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join("")}</tr>`)
    .join("")}</tbody></table>`;
}

async function renderStory(id) {
  const [s, timeline] = await Promise.all([
    json(`/v1/stories/${encodeURIComponent(id)}`),
    json(`/v1/stories/${encodeURIComponent(id)}/timeline`).catch(() => []),
  ]);
  if (current !== id) return; // navigated away meanwhile
  crumb.innerHTML = `<a href="#/">stories</a> / ${esc(id)}`;
  const plans = s.plans.map((p) => [esc(p.plan_id), esc(p.version), esc(p.summary), time(p.created_at_ms),
    p.approvals.length ? p.approvals.map((a) => `${esc(a.approved_by)} at ${time(a.approved_at_ms)}`).join("<br>") : `<span class="muted">not approved</span>`]);
  main.innerHTML = `
  <h1>${esc(s.story_id)} <small>${esc(s.title)}</small></h1>
  <p>Phase <span class="phase" id="phase">${esc(s.phase ?? "–")}</span>
     <span class="muted">· revision <span id="revision">${s.revision}</span> · generation ${esc(s.generation)}${s.created_by ? " · created by " + esc(s.created_by) : ""}</span></p>
  ${s.description ? `<p>${esc(s.description)}</p>` : ""}
  <div class="grid">
  ${section("Phase history", table(["From", "To", "By", "At"], s.phase_history.map((p) => [esc(p.from ?? "–"), esc(p.to), esc(p.by), time(p.at_ms)])), "phases")}
  ${section("Plans and approvals", table(["Plan", "Version", "Summary", "Created", "Approved"], plans), "plans")}
  ${section("Tasks", table(["Task", "Title", "Role", "Status", "Agent"], s.tasks.map((t) => [esc(t.task_id), esc(t.title), esc(t.role), `<span class="status-${esc(t.status)}">${esc(t.status ?? "–")}</span>`, esc(t.agent_id)])), "tasks")}
  ${section("Decisions", table(["Decision", "Title", "Rationale", "By", "At"], s.decisions.map((d) => [esc(d.decision_id), esc(d.title), esc(d.rationale), esc(d.decided_by), time(d.decided_at_ms)])), "decisions")}
  ${section("Milestones", table(["Milestone", "Reached"], s.milestones.map((m) => [esc(m.name), time(m.reached_at_ms)])), "milestones")}
  </div>
  ${section("Timeline", table(["Time", "Event", "Summary"], timeline.map((e) => [time(e.event_time_ms), esc(e.subject), esc(e.summary)])), "timeline")}`;
}

// ---- navigation and the feed ----
async function route() {
  const m = location.hash.match(/^#\/story\/(.+)$/);
  current = m ? decodeURIComponent(m[1]) : null;
  try {
    if (current) await renderStory(current);
    else { await loadList(); renderList(); }
  } catch (e) {
    main.innerHTML = `<p>Could not read the view: ${esc(e.message)}</p>`;
  }
}

async function onChange(c) {
  lastChange.set(c.story_id, { what: c.what, at: c.event_time_ms });
  try {
    if (current === c.story_id) {
      await renderStory(c.story_id);
    } else if (current === null) {
      const s = await json(`/v1/stories/${encodeURIComponent(c.story_id)}`);
      stories.set(c.story_id, { story_id: s.story_id, title: s.title, phase: s.phase, revision: s.revision, last_event_time_ms: Math.max(c.event_time_ms, stories.get(c.story_id)?.last_event_time_ms ?? 0) });
      renderList(c.story_id);
    }
  } catch (e) {
    setStatus("live · " + e.message, "live");
  }
}

function follow() {
  // The feed starts at "now" when the server takes the request: a change committed between
  // the first read of the views and then would be missed, so the views are read once more
  // when the first watermark says the feed is following.
  let first = true;
  const es = new EventSource("/v1/changes");
  es.onopen = () => setStatus("live", "live");
  es.onerror = () => setStatus("reconnecting…", "down");
  es.addEventListener("story.changed", (e) => onChange(JSON.parse(e.data)));
  es.addEventListener("watermark", (e) => {
    const w = JSON.parse(e.data);
    setStatus(`live · up to date ${new Date().toISOString().slice(11, 19)}Z · generation ${w.generation}`, "live");
    if (first) {
      first = false;
      route();
    }
  });
  // Everything may have changed: read the views again.
  es.addEventListener("generation", () => route());
  es.addEventListener("reset", () => route());
  es.addEventListener("dropped", (e) => setStatus("dropped: " + JSON.parse(e.data).reason, "down"));
}

window.addEventListener("hashchange", route);
follow();
route();
