//! `web/`: the operator's web page — what the registry holds (hosted and mirrored
//! repositories, their tags), each upstream's health, the cache's fill, and a chart of
//! the last hour. Rendered on the server with `maud` (escapes every value by default);
//! no JavaScript, no external assets.
//!
//! May import: service, meta records, upstream (its errors), names. Knows nothing of HTTP: `http::handlers::web`
//! authenticates the viewer, calls [`render`] and turns the [`Page`] into a response.
//!
//! Invariants: the viewer's pull filter is applied to every repository named on a page
//! (lists, links, titles), so a repository the viewer may not pull is never named; a
//! repository page for one the viewer may not pull looks exactly like one for a name
//! that does not exist. Every list is capped (see `PAGE_*`): a view costs its caps.

pub(crate) mod history;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::meta::{RepoSummary, TagRow};
use crate::names::RepoName;
use crate::service::{Error, Registry, RepoFilter};
use history::{Counters, Sample, Snapshot};

/// Repositories named on the front page (hosted and mirrored together).
pub(crate) const PAGE_REPOS: usize = 50;
/// Tags per repository page.
pub(crate) const PAGE_TAGS: usize = 100;
/// Platforms listed per index.
const MAX_PLATFORMS: usize = 8;

/// Who is looking.
pub(crate) struct Viewer {
    /// Which repositories they may pull; `None`: all (auth off).
    pub filter: Option<RepoFilter>,
    /// Their user name, when logged in.
    pub user: Option<String>,
    /// `[auth]` is on.
    pub auth_on: bool,
}

impl Viewer {
    fn may_see(&self, repo: &str) -> bool {
        self.filter.as_ref().is_none_or(|f| f(repo))
    }

    fn anonymous(&self) -> bool {
        self.auth_on && self.user.is_none()
    }
}

/// What a request for a page comes to.
#[derive(Debug)]
pub(crate) enum Page {
    Html {
        status: u16,
        body: String,
    },
    /// Ask for credentials (401 with a `Basic` challenge).
    Login,
    /// See other (303) at this path.
    Redirect(String),
}

fn ok(m: Markup) -> Page {
    Page::Html { status: 200, body: m.into_string() }
}

fn query<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
}

/// Render the page at `path` (`/`, `/ui/…`) for `viewer`.
pub(crate) fn render(
    reg: &Arc<Registry>,
    viewer: &Viewer,
    path: &str,
    q: &[(String, String)],
) -> Result<Page, Error> {
    let last = query(q, "last").filter(|s| !s.is_empty());
    match path {
        "/" | "/ui" | "/ui/" => home(reg, viewer, None),
        "/ui/repos" => home(reg, viewer, Some(last.unwrap_or(""))),
        "/ui/upstreams" => Ok(ok(layout(viewer, "Upstreams", upstreams(reg, &Counters::of(&reg.metrics))))),
        "/ui/login" if viewer.anonymous() => Ok(Page::Login),
        "/ui/login" => Ok(Page::Redirect("/".into())),
        _ => match path.strip_prefix("/ui/repo/").map(RepoName::parse) {
            Some(Ok(name)) if viewer.may_see(name.as_str()) => repo_page(reg, viewer, &name, last),
            Some(_) if viewer.anonymous() => Ok(Page::Login),
            _ => Ok(not_found(viewer)),
        },
    }
}

fn not_found(viewer: &Viewer) -> Page {
    let body = layout(viewer, "Not found", html! { p #not-found { "No such page or repository." } });
    Page::Html { status: 404, body: body.into_string() }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1100px}\
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eee;\
vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
code{font-size:12px}.up{color:#17702a;font-weight:600}.down{color:#b00020;font-weight:600}\
.bar{background:#eee;border:1px solid #ccc;height:16px;width:420px;display:inline-block;vertical-align:middle}\
.bar>span{display:block;height:100%;background:#3a7bd5}.muted{color:#777}nav a{margin-right:1em}\
.grid{display:flex;gap:2em;flex-wrap:wrap}";

#[allow(clippy::needless_pass_by_value)] // maud composes `Markup` by value
fn layout(viewer: &Viewer, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · wharfie" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav {
                    a href="/" { "wharfie" }
                    a href="/ui/upstreams" { "upstreams" }
                    @if let Some(u) = &viewer.user {
                        span #viewer .muted { "signed in as " (u) }
                    } @else if viewer.auth_on {
                        a #login href="/ui/login" { "log in" }
                    }
                }
                h1 { (title) }
                (body)
            }
        }
    }
}

// ---- formatting --------------------------------------------------------------------

fn size(n: u64) -> String {
    bytesize::ByteSize(n).to_string()
}

fn time(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn ago(unix: u64) -> String {
    let secs = crate::meta::model::now().saturating_sub(unix);
    format!("{} ago", humantime::format_duration(Duration::from_secs(secs)))
}

/// An error text for the page: anything that looks like an address is cut out (the
/// causes the upstream client records carry none, but the page must never show one).
fn scrub(text: &str) -> String {
    text.split(' ')
        .map(|w| if w.contains("://") || w.contains('@') { "[address]" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---- the front page ----------------------------------------------------------------

struct RepoLine {
    name: String,
    summary: RepoSummary,
}

/// The front page, or (`from` given) the repositories after `from`.
fn home(reg: &Arc<Registry>, viewer: &Viewer, from: Option<&str>) -> Result<Page, Error> {
    let (names, more) =
        reg.catalog(from.filter(|s| !s.is_empty()), Some(PAGE_REPOS), viewer.filter.as_ref())?;
    // Anonymous, and nothing to see: ask for credentials rather than show an empty page.
    if viewer.anonymous() && names.is_empty() && from.is_none() {
        return Ok(Page::Login);
    }
    let (mut hosted, mut mirrored) = (Vec::new(), Vec::new());
    for name in names {
        let Ok(repo) = RepoName::parse(&name) else { continue };
        let line = RepoLine { summary: reg.repo_summary(&repo)?, name };
        match reg.mirrored_from(&line.name) {
            Some(_) => mirrored.push(line),
            None => hosted.push(line),
        }
    }
    let next = if more { hosted.iter().chain(mirrored.iter()).map(|l| l.name.clone()).max() } else { None };
    let counters = Counters::of(&reg.metrics);
    let snap = history::history_of(&reg.metrics).snapshot();
    let title = if from.is_some() { "Repositories" } else { "wharfie" };
    let body = html! {
        @if from.is_none() {
            div .grid {
                div { (cache(reg, &counters, &snap)) }
                div { (chart(&snap.samples)) }
            }
            (upstreams(reg, &counters))
        }
        h2 #hosted-title { "Hosted repositories" }
        (repo_table("hosted", &hosted))
        h2 #mirrored-title { "Mirrored repositories" }
        (repo_table("mirrored", &mirrored))
        @if let Some(n) = next {
            p { a #more href={ "/ui/repos?last=" (n) } { "more repositories →" } }
        }
    };
    Ok(ok(layout(viewer, title, body)))
}

fn repo_table(kind: &str, lines: &[RepoLine]) -> Markup {
    html! {
        @if lines.is_empty() {
            p .muted id={ (kind) "-none" } { "none" }
        } @else {
            table id=(kind) {
                tr { th { "repository" } th { "tags" } th { "manifests" } th { "size" } }
                @for l in lines {
                    @let plus = if l.summary.capped { "+" } else { "" };
                    tr data-repo=(l.name) {
                        td { a href={ "/ui/repo/" (l.name) } { (l.name) } }
                        td .n { (l.summary.tags) (plus) }
                        td .n { (l.summary.manifests) (plus) }
                        td .n { (size(l.summary.bytes)) (plus) }
                    }
                }
            }
        }
    }
}

fn ratio(a: u64, b: u64) -> String {
    if a + b == 0 {
        return "—".into();
    }
    #[allow(clippy::cast_precision_loss)] // a percentage
    let p = a as f64 * 100.0 / (a + b) as f64;
    format!("{p:.1} %")
}

fn upstreams(reg: &Arc<Registry>, c: &Counters) -> Markup {
    let ups = reg.upstreams();
    html! {
        h2 { "Upstreams" }
        @if ups.is_empty() {
            p .muted #upstreams-none { "No upstream is configured: this registry only hosts." }
        } @else {
            table #upstreams {
                tr {
                    th { "upstream" } th { "state" } th { "last error" } th { "requests sent" }
                    th { "hit ratio" } th { "fetched" } th { "served" } th { "coalesced" } th { "policy" }
                }
                @for m in ups {
                    @let down = m.up.down_now();
                    @let f = c.per_upstream.get(m.name()).copied().unwrap_or_default();
                    tr data-upstream=(m.name()) data-state=(if down.is_some() { "down" } else { "up" }) {
                        td { (m.name()) @if m.default { " " span .muted { "(default)" } } }
                        @match &down {
                            Some(crate::upstream::UpstreamError::Down { cause, retry_in, .. }) => {
                                td .down { "down" } td .error { (scrub(cause)) " (next try in " (retry_in) " s)" }
                            }
                            Some(e) => { td .down { "down" } td .error { (scrub(&e.to_string())) } }
                            None => { td .up { "up" } td .muted { "—" } }
                        }
                        td .n .requests { (c.upstream_requests.get(m.name()).copied().unwrap_or(0)) }
                        td .n .hit-ratio data-hits=(f.hits) data-misses=(f.misses) {
                            (ratio(f.hits, f.misses)) br;
                            span .muted { (f.hits) " hits, " (f.misses) " misses" }
                        }
                        td .n .fetched data-bytes=(f.fetched_bytes) { (size(f.fetched_bytes)) }
                        td .n .served data-bytes=(f.served_bytes) { (size(f.served_bytes)) }
                        td .n .coalesced { (f.coalesced) }
                        td {
                            "tag TTL " (humantime::format_duration(m.tag_ttl))
                            @if m.offline { ", offline" }
                            @if m.stale_if_error { ", stale-if-error" }
                        }
                    }
                }
            }
            p .muted {
                "All upstreams together: hit ratio " span #hit-ratio { (ratio(c.cache_hits, c.cache_misses)) }
                " (" (c.cache_hits) " hits, " (c.cache_misses) " misses), "
                span #fetched { (size(c.upstream_bytes)) } " fetched vs "
                // What the mirrors served (hosted repositories' bytes are not the upstreams').
                @let served = c.per_upstream.values().map(|f| f.served_bytes).sum::<u64>();
                span #served data-bytes=(served) { (size(served)) } " served, "
                span #coalesced { (c.coalesced) } " coalesced followers."
            }
        }
    }
}

fn cache(reg: &Arc<Registry>, c: &Counters, snap: &Snapshot) -> Markup {
    let max = reg.cache_max_bytes();
    // The totals are meta's counters (four point reads, whatever the store's size), so
    // the page reads them now; the sampler's copy only stands in if that read fails.
    let store = reg.store_stats().ok().or_else(|| snap.store.clone());
    html! {
        h2 { "Cache" }
        @match &store {
            Some(st) => {
                @let used = st.mirrored_bytes;
                p #cache-used data-used=(used) data-max=(max) {
                    @if max > 0 {
                        // Tenths of a percent; a non-empty cache shows at least a sliver.
                        @let tenths = (u128::from(used) * 1000 / u128::from(max)).min(1000);
                        @let pct = format!("{}.{}", tenths / 10, tenths % 10);
                        @let width = if used > 0 { tenths.max(5) } else { 0 };
                        span .bar title={ (pct) " %" } {
                            span style={ "width:" (width / 10) "." (width % 10) "%" } {}
                        }
                        " " (size(used)) " of " (size(max)) " (" (pct) " %)"
                    } @else {
                        (size(used)) " mirrored (no cap)"
                    }
                }
                p { (st.pushed_blobs) " pushed blobs (" (size(st.pushed_bytes)) "), "
                    (st.mirrored_blobs) " mirrored blobs" }
            }
            None => p .muted #cache-used { "measuring… (the sampler reads the store every "
                (history::INTERVAL.as_secs()) " s)" }
        }
        p { "Evictions: " span #evictions { (c.evicted_blobs) } " blobs (" (size(c.evicted_bytes)) ")" }
        p { "Last GC: " span #last-gc {
            @match snap.gc_seen {
                Some(t) => { (ago(t)) " (" (c.gc_runs) " runs since start)" }
                None => "none since start",
            }
        } }
    }
}

/// Two bar charts over the last hour: requests and bytes served per interval, each
/// scaled to its own maximum (one bar per sample, so even the first one shows).
fn chart(samples: &[Sample]) -> Markup {
    const W: u64 = 360;
    const H: u64 = 44;
    let n = history::SAMPLES as u64;
    let bar_w = (W / n.max(1)).max(1);
    let offset = n.saturating_sub(samples.len() as u64);
    let bars = |f: &dyn Fn(&Sample) -> u64, top: u64, fill: &str| -> Markup {
        let max = samples.iter().map(f).max().unwrap_or(0).max(1);
        html! {
            @for (i, s) in samples.iter().enumerate() {
                @let h = f(s).min(max) * H / max;
                @if h > 0 {
                    rect x=((offset + i as u64) * W / n.max(1)) y=(top + H - h) width=(bar_w) height=(h) fill=(fill) {}
                }
            }
        }
    };
    let max_r = samples.iter().map(|s| s.requests).max().unwrap_or(0);
    let max_b = samples.iter().map(|s| s.bytes).max().unwrap_or(0);
    let secs = history::INTERVAL.as_secs();
    html! {
        h2 { "Last hour" }
        svg #chart xmlns="http://www.w3.org/2000/svg" width="380" height="130" viewBox="0 0 380 130"
            role="img" data-samples=(samples.len()) {
            title { "Requests and bytes served per " (secs) " s over the last hour" }
            rect x="0" y="0" width=(W) height=(H) fill="#fafafa" stroke="#ccc" {}
            rect x="0" y=(H + 20) width=(W) height=(H) fill="#fafafa" stroke="#ccc" {}
            (bars(&|s| s.requests, 0, "#3a7bd5"))
            (bars(&|s| s.bytes, H + 20, "#e8871e"))
            text x="0" y=(H + 13) font-size="10" fill="#3a7bd5" { "requests per " (secs) " s (max " (max_r) ")" }
            text x="0" y=(2 * H + 33) font-size="10" fill="#e8871e" {
                "bytes served per " (secs) " s (max " (size(max_b)) ")"
            }
        }
        @if samples.is_empty() {
            p .muted { "No samples yet (one every " (secs) " s)." }
        }
    }
}

// ---- a repository ------------------------------------------------------------------

/// The kind of a manifest, in words: image, index (with platforms) or artifact.
fn kind(row: &TagRow) -> Markup {
    let Some(m) = &row.manifest else {
        return html! { span .muted { "manifest missing" } };
    };
    let short = m.media_type.rsplit('/').next().unwrap_or(&m.media_type);
    if let Some(body) = &row.index_body {
        let platforms = platforms(body);
        let extra = platforms.len().saturating_sub(MAX_PLATFORMS);
        return html! {
            span .kind data-kind="index" { "index" } " "
            span .platforms { (platforms.iter().take(MAX_PLATFORMS).cloned().collect::<Vec<_>>().join(", ")) }
            @if extra > 0 { " and " (extra) " more" }
            br; code .muted { (short) }
        };
    }
    // The record's artifact type falls back to the config's media type (as the
    // referrers API lists it): an image config there means an image.
    let image_config = |t: &str| {
        t == "application/vnd.oci.image.config.v1+json"
            || t == "application/vnd.docker.container.image.v1+json"
    };
    match m.artifact_type.as_deref().filter(|t| !image_config(t)) {
        Some(t) => {
            html! { span .kind data-kind="artifact" { "artifact" } " " code { (t) } br; code .muted { (short) } }
        }
        None => html! { span .kind data-kind="image" { "image" } br; code .muted { (short) } },
    }
}

/// `os/architecture[/variant]` of each entry of an index (the text comes from the
/// network: it is escaped where it is rendered).
fn platforms(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return vec![] };
    let Some(list) = v.get("manifests").and_then(|m| m.as_array()) else { return vec![] };
    list.iter()
        .map(|m| {
            let p = m.get("platform");
            let f = |k: &str| p.and_then(|p| p.get(k)).and_then(|s| s.as_str()).unwrap_or("");
            let mut s = format!("{}/{}", f("os"), f("architecture"));
            if !f("variant").is_empty() {
                s = format!("{s}/{}", f("variant"));
            }
            if s == "/" {
                "unknown".into()
            } else {
                s
            }
        })
        .collect()
}

fn repo_page(
    reg: &Arc<Registry>,
    viewer: &Viewer,
    name: &RepoName,
    last: Option<&str>,
) -> Result<Page, Error> {
    let (rows, more) = reg.tag_rows(name, last, PAGE_TAGS)?;
    let summary = reg.repo_summary(name)?;
    if rows.is_empty() && last.is_none() && summary.manifests == 0 {
        return Ok(not_found(viewer));
    }
    let mirror = reg.mirrored_from(name.as_str());
    let body = html! {
        p #repo-kind {
            @match mirror {
                Some(m) => { "Mirrored from upstream " strong { (m.name()) } "." }
                None => "Hosted here.",
            }
            " " (summary.tags) " tags, " (summary.manifests) " manifests, " (size(summary.bytes)) " stored."
        }
        table #tags {
            tr {
                th { "tag" } th { "digest" } th { "kind" } th { "size" }
                th { "pushed / fetched" } @if mirror.is_some() { th { "checked upstream" } }
            }
            @for r in &rows {
                tr data-tag=(r.tag) {
                    td { (r.tag) }
                    td { code title=(r.rec.digest.as_str()) { (short_digest(r.rec.digest.as_str())) } }
                    td { (kind(r)) }
                    td .n { (size(r.bytes)) }
                    td {
                        @match &r.manifest {
                            Some(m) => {
                                (if m.origin == crate::meta::Origin::Mirrored { "fetched " } else { "pushed " })
                                (time(m.created))
                            }
                            None => "—",
                        }
                        @if r.rec.updated != r.manifest.as_ref().map_or(0, |m| m.created) {
                            br; span .muted { "tag set " (time(r.rec.updated)) }
                        }
                    }
                    @if mirror.is_some() {
                        td .checked {
                            @match r.rec.checked { Some(t) => { (ago(t)) }, None => "never" }
                        }
                    }
                }
            }
        }
        @if more {
            @if let Some(l) = rows.last() {
                p { a #more href={ "/ui/repo/" (name) "?last=" (l.tag) } { "more tags →" } }
            }
        }
    };
    Ok(ok(layout(viewer, name.as_str(), body)))
}

fn short_digest(d: &str) -> &str {
    d.get(..19).unwrap_or(d)
}
