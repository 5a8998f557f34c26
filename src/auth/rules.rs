//! Per-repository access rules: repository-name globs, compiled once at load (by
//! `config::auth`, into [`CompiledRule`]s); here, what they grant a principal.
//!
//! Glob syntax (patterns are checked at load; a pattern that could never match a valid
//! repository name is an error, not a silent no-op):
//! - a pattern is `/`-separated components, matched against the repository name's
//!   components;
//! - `*` inside a component matches any run of characters within that one component
//!   (`team/*` matches `team/app`, not `team/app/web` nor `team`; `lib*` matches `lib` and
//!   `libfoo`);
//! - `**` as a whole component matches any number of whole components: zero or more in
//!   the middle or at the start (`**/nginx` matches `nginx` and `a/b/nginx`;
//!   `a/**/b` matches `a/b` and `a/x/y/b`), one or more at the end (`team/**` matches
//!   everything under `team/` but not the repository `team` itself; `**` alone matches
//!   every repository);
//! - anything else matches literally.

use super::{Access, Principal};

pub(crate) use crate::config::auth::{AccessSet, CompiledRule, ANONYMOUS};

/// The union of the access the rules give `p` on the repository `repo`.
///
/// `push` implies `pull`: a client pushing reads back what already exists (HEAD on blobs
/// and manifests) and could not push without it.
pub(crate) fn granted(rules: &[CompiledRule], p: &Principal, repo: &str) -> AccessSet {
    let mut set = rules.iter().fold(AccessSet::default(), |s, r| s.union(r.grants(p.user(), repo)));
    if set.contains(Access::Push) {
        set = set.with(Access::Pull);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::auth::{compile, Pattern, Rule};

    #[test]
    fn glob_table() {
        let table: &[(&str, &str, bool)] = &[
            // exact
            ("library/nginx", "library/nginx", true),
            ("library/nginx", "library/nginx2", false),
            ("library/nginx", "library", false),
            ("library/nginx", "x/library/nginx", false),
            // `*` stays within one component
            ("team/*", "team/app", true),
            ("team/*", "team/app/web", false),
            ("team/*", "team", false),
            ("team/*", "other/app", false),
            ("*", "nginx", true),
            ("*", "library/nginx", false),
            ("*/nginx", "library/nginx", true),
            ("*/nginx", "a/b/nginx", false),
            ("lib*", "lib", true),
            ("lib*", "library", true),
            ("lib*", "alib", false),
            ("*-dev", "app-dev", true),
            ("*-dev", "app-prod", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("team/app-*", "team/app-web", true),
            // `**` crosses components
            ("**", "nginx", true),
            ("**", "a/b/c/d", true),
            ("team/**", "team/app", true),
            ("team/**", "team/app/web/x", true),
            ("team/**", "team", false),
            ("team/**", "teams/app", false),
            ("**/nginx", "nginx", true),
            ("**/nginx", "library/nginx", true),
            ("**/nginx", "a/b/c/nginx", true),
            ("**/nginx", "a/nginx/b", false),
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b", true),
            ("a/**/b", "a/x/y/c", false),
            ("**/team-*/**", "x/team-a/y", true),
            ("**/team-*/**", "team-a/y", true),
            ("**/team-*/**", "team-a", false),
            ("**/**/**/**/**/z", "a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/y", false),
        ];
        for &(pat, name, want) in table {
            let p = Pattern::parse(pat).expect("valid pattern");
            assert_eq!(p.matches(name), want, "pattern {pat:?} against {name:?}");
        }
    }

    #[test]
    fn bad_patterns_are_explained() {
        for (pat, needle) in [
            ("", "empty"),
            ("team//app", "empty path component"),
            ("/team", "empty path component"),
            ("team/", "empty path component"),
            ("team**", "whole path component"),
            ("Team/*", "'T'"),
            ("team/?", "'?'"),
        ] {
            let err = Pattern::parse(pat).expect_err(pat);
            assert!(err.contains(needle), "{pat:?}: {err}");
        }
    }

    #[test]
    fn rules_union_and_push_implies_pull() {
        let rules = compile(&[
            Rule { repos: "team/*".into(), users: vec!["alice".into()], access: vec![Access::Push] },
            Rule { repos: "team/app".into(), users: vec!["alice".into()], access: vec![Access::Delete] },
            Rule { repos: "**".into(), users: vec!["*".into()], access: vec![Access::Pull] },
        ])
        .expect("compiles");
        let alice = Principal::User("alice".into());
        let bob = Principal::User("bob".into());
        let g = granted(&rules, &alice, "team/app");
        assert!(g.contains(Access::Pull) && g.contains(Access::Push) && g.contains(Access::Delete));
        let g = granted(&rules, &alice, "team/web");
        assert!(g.contains(Access::Pull) && g.contains(Access::Push) && !g.contains(Access::Delete));
        let g = granted(&rules, &bob, "team/app");
        assert!(g.contains(Access::Pull) && !g.contains(Access::Push));
        assert_eq!(granted(&rules, &Principal::Anonymous, "team/app"), AccessSet::default());
    }

    #[test]
    fn bad_rules_name_the_rule() {
        let ok = Rule { repos: "**".into(), users: vec!["a".into()], access: vec![Access::Pull] };
        let cases = [
            (Rule { users: vec![], ..ok.clone() }, "users is empty"),
            (Rule { access: vec![], ..ok.clone() }, "access is empty"),
            (Rule { users: vec!["a:b".into()], ..ok.clone() }, "cannot occur"),
            (Rule { users: vec!["".into()], ..ok.clone() }, "empty user name"),
            (Rule { repos: "A".into(), ..ok.clone() }, "never occurs"),
        ];
        for (bad, needle) in cases {
            let err = compile(&[ok.clone(), bad]).expect_err(needle).to_string();
            assert!(err.contains("rule 2") && err.contains(needle), "{err}");
        }
    }
}
