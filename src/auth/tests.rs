use std::io::Write;
use std::path::Path;

use base64::Engine;

use super::*;
use crate::config::auth::{AuthConfig, Rule};

const COST: u32 = 4;

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

fn write_htpasswd(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("htpasswd");
    let mut text = String::from("# wharfie users\n\n");
    for (u, p) in users {
        let h = bcrypt::hash(p, COST).expect("hash").replacen("$2b$", "$2y$", 1);
        text.push_str(&format!("{u}:{h}\n"));
    }
    std::fs::write(&path, text).expect("write htpasswd");
    path
}

fn auth_with(dir: &Path, users: &[(&str, &str)], f: impl FnOnce(&mut AuthConfig)) -> Authenticator {
    let mut cfg = AuthConfig { htpasswd: Some(write_htpasswd(dir, users)), ..AuthConfig::default() };
    f(&mut cfg);
    Authenticator::new(cfg.resolve().expect("resolves")).expect("authenticator")
}

/// An authenticator for the htpasswd file at `path` and otherwise default settings.
fn auth_file(path: PathBuf) -> Result<Authenticator, AuthError> {
    let cfg = AuthConfig { htpasswd: Some(path), ..AuthConfig::default() };
    Authenticator::new(cfg.resolve().expect("resolves"))
}

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).expect("repo name")
}

fn rule(repos: &str, users: &[&str], access: &[Access]) -> Rule {
    Rule {
        repos: repos.into(),
        users: users.iter().map(|s| s.to_string()).collect(),
        access: access.to_vec(),
    }
}

fn user(u: &str) -> Principal {
    Principal::User(u.into())
}

#[test]
fn disabled_is_open_and_ignores_headers() {
    let a = Authenticator::new(AuthConfig::default().resolve().expect("default")).expect("default");
    assert!(!a.enabled());
    assert_eq!(a.authenticate(Some("Bearer whatever")).expect("ignored"), Principal::Anonymous);
    for access in [Access::Pull, Access::Push, Access::Delete] {
        assert!(a.authorize(&Principal::Anonymous, Some(&repo("a/b")), access));
    }
    assert!(a.authorize(&Principal::Anonymous, None, Access::Pull));
    assert_eq!(a.bcrypt_verifications(), 0);
}

#[test]
fn disabled_constructor_is_the_default_config() {
    let a = Authenticator::disabled();
    assert!(!a.enabled());
    assert!(a.authorize(&Principal::Anonymous, Some(&repo("x")), Access::Delete));
    assert_eq!(AuthConfig::default().resolve().expect("default"), AuthSettings::off());
    let bad = AuthConfig { anonymous: Anonymous::None, ..AuthConfig::default() };
    assert!(bad.resolve().expect_err("no htpasswd").to_string().contains("anonymous = \"none\""));
}

#[test]
fn rules_or_anonymous_none_without_htpasswd_are_errors() {
    let cfg = AuthConfig { rules: vec![rule("**", &["*"], &[Access::Pull])], ..AuthConfig::default() };
    let err = cfg.resolve().expect_err("rules need htpasswd").to_string();
    assert!(err.contains("htpasswd"), "{err}");
    let cfg = AuthConfig { anonymous: Anonymous::None, ..AuthConfig::default() };
    let err = cfg.resolve().expect_err("none needs htpasswd").to_string();
    assert!(err.contains("htpasswd"), "{err}");
}

#[test]
fn bad_htpasswd_file_fails_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("htpasswd");
    std::fs::write(&path, "alice:$apr1$xyz$abc\n").expect("write");
    let err = auth_file(path.clone()).expect_err("md5 rejected").to_string();
    assert!(err.contains(&format!("{}:1:", path.display())) && err.contains("$apr1$"), "{err}");
    let missing = dir.path().join("nope");
    let err = auth_file(missing).expect_err("missing").to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn correct_and_incorrect_passwords() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "s3cret:with:colons"), ("bob", "hunter2")], |_| {});
    assert!(a.enabled());
    assert_eq!(a.user_count(), 2);
    assert_eq!(a.authenticate(Some(&basic("alice", "s3cret:with:colons"))).expect("ok"), user("alice"));
    assert_eq!(a.authenticate(Some(&basic("bob", "hunter2"))).expect("ok"), user("bob"));
    assert!(matches!(a.authenticate(Some(&basic("bob", "hunter3"))), Err(AuthError::BadCredentials)));
    assert!(matches!(a.authenticate(Some(&basic("alice", ""))), Err(AuthError::BadCredentials)));
    // The scheme is case-insensitive.
    let lower = basic("bob", "hunter2").replacen("Basic", "basic", 1);
    assert_eq!(a.authenticate(Some(&lower)).expect("ok"), user("bob"));
    assert_eq!(a.authenticate(None).expect("anonymous"), Principal::Anonymous);
}

#[test]
fn unknown_user_spends_a_bcrypt_verification() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "pw")], |_| {});
    let before = a.bcrypt_verifications();
    // Even with alice's password: the dummy is alice's hash, the answer must still be no.
    assert!(matches!(a.authenticate(Some(&basic("mallory", "pw"))), Err(AuthError::BadCredentials)));
    assert_eq!(a.bcrypt_verifications(), before + 1);
    let empty = auth_with(dir.path(), &[], |_| {});
    assert!(matches!(empty.authenticate(Some(&basic("x", "y"))), Err(AuthError::BadCredentials)));
    assert_eq!(empty.bcrypt_verifications(), 1);
}

#[test]
fn cache_hits_skip_bcrypt_and_never_accept_a_wrong_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "pw"), ("bob", "pw2")], |_| {});
    let h = basic("alice", "pw");
    assert_eq!(a.authenticate(Some(&h)).expect("ok"), user("alice"));
    assert_eq!(a.bcrypt_verifications(), 1);
    for _ in 0..5 {
        assert_eq!(a.authenticate(Some(&h)).expect("ok"), user("alice"));
    }
    assert_eq!(a.bcrypt_verifications(), 1, "cache hits run no bcrypt");
    // A wrong password for a cached user misses the cache and fails.
    assert!(matches!(a.authenticate(Some(&basic("alice", "PW"))), Err(AuthError::BadCredentials)));
    assert_eq!(a.bcrypt_verifications(), 2);
    // Another user's cached password does not open this one.
    assert!(matches!(a.authenticate(Some(&basic("bob", "pw"))), Err(AuthError::BadCredentials)));
    assert_eq!(a.bcrypt_verifications(), 3);
    // Failures are not cached; the good entry still is.
    assert_eq!(a.authenticate(Some(&h)).expect("ok"), user("alice"));
    assert_eq!(a.bcrypt_verifications(), 3);
}

#[test]
fn zero_ttl_disables_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "pw")], |c| c.cache_ttl = Duration::ZERO);
    for n in 1..=3 {
        assert_eq!(a.authenticate(Some(&basic("alice", "pw"))).expect("ok"), user("alice"));
        assert_eq!(a.bcrypt_verifications(), n);
    }
}

#[test]
fn reload_picks_up_changes_and_forgets_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "old")], |_| {});
    assert!(a.authenticate(Some(&basic("alice", "old"))).is_ok());
    write_htpasswd(dir.path(), &[("alice", "new"), ("bob", "b")]);
    a.reload().expect("reload");
    assert!(matches!(a.authenticate(Some(&basic("alice", "old"))), Err(AuthError::BadCredentials)));
    assert_eq!(a.authenticate(Some(&basic("alice", "new"))).expect("ok"), user("alice"));
    assert_eq!(a.authenticate(Some(&basic("bob", "b"))).expect("ok"), user("bob"));
    // A broken file keeps the previous users.
    std::fs::write(dir.path().join("htpasswd"), "bob:{SHA}abc\n").expect("write");
    assert!(a.reload().is_err());
    assert_eq!(a.authenticate(Some(&basic("bob", "b"))).expect("still ok"), user("bob"));
}

#[test]
fn malformed_headers_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "pw")], |_| {});
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "empty value"),
        ("   ".into(), "empty value"),
        ("Basic".into(), "without credentials"),
        ("Basic    ".into(), "without credentials"),
        ("Basic !!!not-base64!!!".into(), "not valid base64"),
        (format!("Basic {}", b64(b"alicepw")), "no `:`"),
        (format!("Basic {}", b64(b":pw")), "user name is empty"),
        (format!("Basic {}", b64(b"\xff\xfe:pw")), "not UTF-8"),
        ("Bearer abc.def.ghi".into(), "unsupported scheme \"Bearer\""),
        ("Digest username=\"a\"".into(), "unsupported scheme \"Digest\""),
        ("c2VjcmV0LXRva2VuLXZhbHVl".into(), "unsupported scheme (only Basic"),
    ];
    for (h, needle) in cases {
        let err = a.authenticate(Some(&h)).expect_err(&h);
        assert!(matches!(err, AuthError::BadHeader(_)), "{h:?}: {err:?}");
        assert!(err.is_unauthorized());
        let msg = err.to_string();
        assert!(msg.contains(needle), "{h:?}: {msg}");
        assert!(!msg.contains("c2VjcmV0"), "never echo a token: {msg}");
    }
    // `:` alone is what containers/image sends after a Basic challenge when it has no
    // credentials: anonymous, not an error (and no bcrypt).
    assert_eq!(
        a.authenticate(Some(&format!("Basic {}", b64(b":")))).expect("anonymous"),
        Principal::Anonymous
    );
    assert_eq!(a.authenticate(Some("Basic Og")).expect("unpadded too"), Principal::Anonymous);
    // Unpadded base64 is accepted.
    let unpadded = format!("Basic {}", b64(b"alice:pw").trim_end_matches('='));
    assert_eq!(a.authenticate(Some(&unpadded)).expect("unpadded"), user("alice"));
    assert_eq!(a.bcrypt_verifications(), 1, "malformed headers run no bcrypt");
}

#[test]
fn arbitrary_headers_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "pw")], |c| c.cache_ttl = Duration::ZERO);
    let mut seeds: Vec<Vec<u8>> = vec![b"Basic ".to_vec(), b"basic\t".to_vec(), vec![]];
    for i in 0..200u32 {
        let mut v: Vec<u8> =
            (0..(i % 40)).map(|j| (i.wrapping_mul(31).wrapping_add(j * 7) % 256) as u8).collect();
        if i % 2 == 0 {
            let mut pre = b"Basic ".to_vec();
            pre.extend(base64::engine::general_purpose::STANDARD.encode(&v).bytes());
            v = pre;
        }
        seeds.push(v);
    }
    for s in seeds {
        let h = String::from_utf8_lossy(&s);
        let _ = a.authenticate(Some(&h));
    }
}

#[test]
fn no_rules_users_do_everything_anonymous_pulls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "pw")], |_| {});
    let r = repo("team/app");
    for access in [Access::Pull, Access::Push, Access::Delete] {
        assert!(a.authorize(&user("alice"), Some(&r), access));
    }
    assert!(a.authorize(&Principal::Anonymous, Some(&r), Access::Pull));
    assert!(!a.authorize(&Principal::Anonymous, Some(&r), Access::Push));
    assert!(!a.authorize(&Principal::Anonymous, Some(&r), Access::Delete));
    assert!(a.authorize(&Principal::Anonymous, None, Access::Pull), "catalog with anonymous pull");
    assert!(a.authorize(&user("alice"), None, Access::Pull));
}

#[test]
fn anonymous_none_denies_anonymous_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "pw")], |c| c.anonymous = Anonymous::None);
    let r = repo("library/nginx");
    for access in [Access::Pull, Access::Push, Access::Delete] {
        assert!(!a.authorize(&Principal::Anonymous, Some(&r), access));
        assert!(a.authorize(&user("alice"), Some(&r), access));
    }
    assert!(!a.authorize(&Principal::Anonymous, None, Access::Pull), "catalog needs a login");
    assert!(a.authorize(&user("alice"), None, Access::Pull));
}

#[test]
fn rules_union_per_principal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "a"), ("bob", "b"), ("carol", "c")], |c| {
        c.anonymous = Anonymous::None;
        c.rules = vec![
            rule("public/**", &["anonymous", "*"], &[Access::Pull]),
            rule("team/*", &["alice", "bob"], &[Access::Push]),
            rule("team/app", &["alice"], &[Access::Delete]),
            rule("**", &["carol"], &[Access::Pull, Access::Push, Access::Delete]),
        ];
    });
    let (anon, alice, bob, dave) = (Principal::Anonymous, user("alice"), user("bob"), user("dave"));
    let t = |p: &Principal, r: &str, acc: Access| a.authorize(p, Some(&repo(r)), acc);
    // anonymous: only what the "anonymous" rule grants
    assert!(t(&anon, "public/x/y", Access::Pull));
    assert!(!t(&anon, "public/x/y", Access::Push));
    assert!(!t(&anon, "team/app", Access::Pull));
    assert!(!t(&anon, "public", Access::Pull), "`public/**` is what is under public/");
    // "*" = any authenticated user
    assert!(t(&dave, "public/x", Access::Pull));
    assert!(!t(&dave, "team/app", Access::Pull));
    // union of matching rules; push implies pull
    assert!(t(&alice, "team/app", Access::Pull) && t(&alice, "team/app", Access::Push));
    assert!(t(&alice, "team/app", Access::Delete));
    assert!(!t(&alice, "team/web", Access::Delete));
    assert!(t(&bob, "team/web", Access::Push) && !t(&bob, "team/app", Access::Delete));
    assert!(!t(&bob, "team/app/sub", Access::Pull), "`*` stays within one component");
    assert!(!t(&bob, "other", Access::Pull));
    assert!(t(&user("carol"), "anything/at/all", Access::Delete));
    // catalog: authenticated only, under anonymous = none
    assert!(!a.authorize(&anon, None, Access::Pull));
    assert!(a.authorize(&dave, None, Access::Pull));
}

#[test]
fn anonymous_pull_adds_pull_everywhere_to_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "a"), ("bob", "b")], |c| {
        c.rules = vec![rule("team/*", &["alice"], &[Access::Push])];
    });
    let t = |p: &Principal, r: &str, acc: Access| a.authorize(p, Some(&repo(r)), acc);
    assert!(t(&Principal::Anonymous, "team/app", Access::Pull));
    assert!(t(&user("bob"), "team/app", Access::Pull), "a user never has less than anonymous");
    assert!(!t(&user("bob"), "team/app", Access::Push), "rules exist: no blanket push");
    assert!(t(&user("alice"), "team/app", Access::Push));
    assert!(!t(&user("alice"), "team/app", Access::Delete));
    assert!(!t(&user("alice"), "elsewhere", Access::Push));
}

#[test]
fn challenge_names_the_realm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[], |_| {});
    assert_eq!(a.challenge(), "Basic realm=\"wharfie\"");
    let a = auth_with(dir.path(), &[], |c| c.realm = "my \"lab\"".into());
    assert_eq!(a.challenge(), "Basic realm=\"my \\\"lab\\\"\"");
}

#[test]
fn debug_does_not_print_hashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "pw")], |_| {});
    let d = format!("{a:?}");
    assert!(!d.contains("$2"), "{d}");
}

#[test]
fn config_section_parses_with_figment() {
    use figment::providers::{Format, Serialized, Toml};
    use serde::{Deserialize, Serialize};
    #[derive(Deserialize, Serialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Wrapper {
        #[serde(default)]
        auth: AuthConfig,
    }
    let toml = r#"
        [auth]
        htpasswd = "/etc/wharfie/htpasswd"
        anonymous = "none"
        cache_ttl = "2m"

        [[auth.rules]]
        repos = "team/**"
        users = ["alice", "*"]
        access = ["pull", "push", "delete"]
    "#;
    let w: Wrapper = figment::Figment::from(Serialized::defaults(Wrapper::default()))
        .merge(Toml::string(toml))
        .extract()
        .expect("parses");
    assert_eq!(w.auth.htpasswd.as_deref(), Some(Path::new("/etc/wharfie/htpasswd")));
    assert_eq!(w.auth.anonymous, Anonymous::None);
    assert_eq!(w.auth.realm, "wharfie");
    assert_eq!(w.auth.cache_ttl, Duration::from_secs(120));
    assert_eq!(
        w.auth.rules,
        vec![rule("team/**", &["alice", "*"], &[Access::Pull, Access::Push, Access::Delete])]
    );

    // Defaults survive figment's serialize-then-extract round trip.
    let d: Wrapper =
        figment::Figment::from(Serialized::defaults(Wrapper::default())).extract().expect("defaults");
    assert_eq!(d.auth, AuthConfig::default());

    for bad in [
        "[auth]\nhtpasswd_file = \"x\"\n",
        "[auth]\nanonymous = \"read\"\n",
        "[[auth.rules]]\nrepos = \"**\"\nusers = [\"*\"]\naccess = [\"write\"]\n",
        "[[auth.rules]]\nrepos = \"**\"\nuser = [\"*\"]\naccess = [\"pull\"]\n",
    ] {
        let r: Result<Wrapper, _> = figment::Figment::from(Serialized::defaults(Wrapper::default()))
            .merge(Toml::string(bad))
            .extract();
        assert!(r.is_err(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_authentication_uses_the_cache_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Arc::new(auth_with(dir.path(), &[("alice", "pw")], |_| {}));
    let h = basic("alice", "pw");
    assert_eq!(a.authenticate_async(Some(&h)).await.expect("ok"), user("alice"));
    assert_eq!(a.authenticate_async(Some(&h)).await.expect("ok"), user("alice"));
    assert_eq!(a.bcrypt_verifications(), 1);
    assert!(matches!(
        a.authenticate_async(Some(&basic("alice", "no"))).await,
        Err(AuthError::BadCredentials)
    ));
    assert!(matches!(a.authenticate_async(Some("Basic %%%")).await, Err(AuthError::BadHeader(_))));
    assert_eq!(a.authenticate_async(None).await.expect("anon"), Principal::Anonymous);
    // Concurrent callers all get an answer.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let a = a.clone();
            let h = h.clone();
            tokio::spawn(async move { a.authenticate_async(Some(&h)).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("join").expect("ok"), user("alice"));
    }
}

/// The file format as Apache's own tool writes it (apache2-utils).
#[test]
fn real_htpasswd_tool_output_verifies() {
    let out = match std::process::Command::new("htpasswd").args(["-Bbn", "user", "pass"]).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("htpasswd not found: apt-get install -y apache2-utils")
        }
        Err(e) => panic!("running htpasswd: {e}"),
    };
    assert!(out.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("htpasswd");
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(&out.stdout).expect("write");
    drop(f);
    // Also append a second entry the way `htpasswd -B FILE user2 pw2` would.
    let status = std::process::Command::new("htpasswd")
        .args(["-Bb"])
        .arg(&path)
        .args(["user2", "p@ss:w0rd"])
        .output()
        .expect("htpasswd ran before");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.starts_with("user:$2y$"), "{text}");
    let a = auth_file(path).expect("loads");
    assert_eq!(a.user_count(), 2);
    assert_eq!(a.authenticate(Some(&basic("user", "pass"))).expect("ok"), user("user"));
    assert_eq!(a.authenticate(Some(&basic("user2", "p@ss:w0rd"))).expect("ok"), user("user2"));
    assert!(matches!(a.authenticate(Some(&basic("user", "pas"))), Err(AuthError::BadCredentials)));

    // An MD5 entry from the same tool is refused with the line number.
    let md5 = std::process::Command::new("htpasswd")
        .args(["-mbn", "old", "pw"])
        .output()
        .expect("htpasswd ran before");
    let dir2 = tempfile::tempdir().expect("tempdir");
    let p2 = dir2.path().join("htpasswd");
    std::fs::write(&p2, &md5.stdout).expect("write");
    let err = auth_file(p2).expect_err("md5").to_string();
    assert!(err.contains(":1:") && err.contains("$apr1$") && err.contains("htpasswd -B"), "{err}");
}

#[test]
fn tokens_name_their_user_and_nothing_else_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "pw"), ("bob", "pw2")], |c| c.token = true);
    let (t, ttl, _) = a.issue_token(&user("alice"), ["repository:team/app:pull"]);
    assert_eq!(ttl, Duration::from_secs(300));
    assert_eq!(a.authenticate(Some(&format!("Bearer {t}"))).expect("token"), user("alice"));
    assert_eq!(a.authenticate(Some(&format!("bearer  {t} "))).expect("scheme any case"), user("alice"));
    let (anon, _, _) = a.issue_token(&Principal::Anonymous, []);
    assert_eq!(
        a.authenticate(Some(&format!("Bearer {anon}"))).expect("anonymous token"),
        Principal::Anonymous
    );
    assert_eq!(a.bcrypt_verifications(), 0, "tokens never run bcrypt");

    // Swapping the user, the expiry or the signature breaks it.
    let b64 = |s: &str| URL_SAFE.encode(s);
    let forged = [
        t.replacen(&b64("alice"), &b64("bob"), 1),
        t.replacen(t.split('.').next().expect("expiry"), "99999999999", 1),
        format!("{}A", t),
        t.rsplit_once('.').map(|(p, _)| p.to_string()).expect("payload"),
        String::new(),
        "a.b.c.d".into(),
    ];
    for f in &forged {
        let err = a.authenticate(Some(&format!("Bearer {f}"))).expect_err(f);
        assert!(matches!(err, AuthError::BadToken(_) | AuthError::BadHeader(_)), "{f}: {err:?}");
        assert!(err.is_unauthorized());
    }
    // Another process (another key) cannot mint them.
    let other = auth_with(dir.path(), &[("alice", "pw")], |c| c.token = true);
    assert!(matches!(other.authenticate(Some(&format!("Bearer {t}"))), Err(AuthError::BadToken(_))));
    // A reload retires every token issued before it.
    a.reload().expect("reload");
    assert!(matches!(a.authenticate(Some(&format!("Bearer {t}"))), Err(AuthError::BadToken(_))));
    // Without `token = true`, Bearer is just an unsupported scheme.
    let plain = auth_with(dir.path(), &[("alice", "pw")], |_| {});
    assert!(matches!(plain.authenticate(Some(&format!("Bearer {t}"))), Err(AuthError::BadHeader(_))));
}

#[test]
fn token_expiry_is_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "pw")], |c| {
        c.token = true;
        c.token_ttl = Duration::from_secs(1);
    });
    let (t, _, _) = a.issue_token(&user("alice"), []);
    let h = format!("Bearer {t}");
    // Valid now; expired within at most two seconds (whole-second expiry).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        match a.authenticate(Some(&h)) {
            Ok(p) => assert_eq!(p, user("alice")),
            Err(AuthError::BadToken(reason)) => {
                assert_eq!(reason, "expired");
                break;
            }
            Err(e) => panic!("{e:?}"),
        }
        n += 1;
        assert!(n < 1000 && Instant::now() < deadline, "a 1s token still verifies");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bearer_challenge_points_at_the_token_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[], |c| c.token = true);
    assert_eq!(
        a.challenge_at(Some("http://reg.example:5000"), None),
        "Bearer realm=\"http://reg.example:5000/token\",service=\"wharfie\""
    );
    assert_eq!(a.challenge_at(None, None), "Basic realm=\"wharfie\"", "no Host: Basic");
    // The scope a request needs goes into the Bearer challenge, as Distribution does.
    assert_eq!(
        a.challenge_at(Some("http://reg.example:5000"), Some("repository:site/bb:pull,push")),
        "Bearer realm=\"http://reg.example:5000/token\",service=\"wharfie\",scope=\"repository:site/bb:pull,push\""
    );
    let a = auth_with(dir.path(), &[], |c| {
        c.token = true;
        c.token_realm = Some("https://auth.example/token".into());
    });
    assert_eq!(a.challenge_at(None, None), "Bearer realm=\"https://auth.example/token\",service=\"wharfie\"");
    let plain = auth_with(dir.path(), &[], |_| {});
    assert_eq!(plain.challenge_at(Some("http://x"), Some("repository:a:pull")), "Basic realm=\"wharfie\"");
    for bad in ["ftp://x/token", "https://x/\"token", "https://x y/token"] {
        let cfg = AuthConfig {
            htpasswd: Some(dir.path().join("htpasswd")),
            token: true,
            token_realm: Some(bad.into()),
            ..AuthConfig::default()
        };
        assert!(cfg.resolve().expect_err(bad).to_string().contains("token_realm"), "{bad}");
    }
    let cfg = AuthConfig { token: true, ..AuthConfig::default() };
    assert!(cfg.resolve().expect_err("no file").to_string().contains("token = true needs an htpasswd"));
}

#[test]
fn scopes_parse_canonically_and_ignore_what_they_do_not_know() {
    use super::scope::{repository_scope, Grants};
    let g = Grants::parse([
        "repository:b:pull",
        "repository:a:push,pull registry:catalog:*",
        "repository:a:delete,bogus",
        "repository:Bad Name:pull",
        "repository:c:*",
        "plugin:x:pull",
        "nonsense",
        "",
    ]);
    assert_eq!(
        g.to_text(),
        "registry:catalog:* repository:a:pull,push,delete repository:b:pull repository:c:pull,push,delete"
    );
    assert_eq!(Grants::parse([g.to_text().as_str()]), g, "the text form round-trips");
    assert!(g.allows(&repo("a"), Access::Push) && g.allows(&repo("b"), Access::Pull));
    assert!(!g.allows(&repo("b"), Access::Push) && !g.allows(&repo("d"), Access::Pull));
    assert!(g.catalog());
    assert!(Grants::parse(["registry:catalog:pull"]).is_empty(), "the catalog wants *");
    assert_eq!(repository_scope(&repo("a/b"), Access::Push), "repository:a/b:pull,push");
    assert_eq!(repository_scope(&repo("a/b"), Access::Pull), "repository:a/b:pull");
    assert_eq!(repository_scope(&repo("a/b"), Access::Delete), "repository:a/b:delete");
}

#[test]
fn tokens_grant_the_intersection_of_the_asked_scope_and_the_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = auth_with(dir.path(), &[("alice", "pw"), ("bob", "pw2")], |c| {
        c.token = true;
        c.rules = vec![rule("team/**", &["alice"], &[Access::Push])];
    });
    let asked = ["repository:team/app:pull,push,delete", "repository:other:pull,push", "registry:catalog:*"];
    // alice: push (and so pull) on team/**, pull elsewhere (anonymous = "pull"), no delete.
    let (t, _, g) = a.issue_token(&user("alice"), asked);
    assert_eq!(g.to_text(), "registry:catalog:* repository:other:pull repository:team/app:pull,push");
    let id = a.identify(Some(&format!("Bearer {t}"))).expect("token");
    assert_eq!(id.principal, user("alice"));
    assert_eq!(id.grants.as_ref(), Some(&g), "the token carries what was granted");
    assert!(id.token_allows(&repo("team/app"), Access::Push));
    assert!(!id.token_allows(&repo("team/app"), Access::Delete), "delete was asked, not granted");
    assert!(!id.token_allows(&repo("other"), Access::Push));
    assert!(!id.token_allows(&repo("team/other"), Access::Pull), "never asked for");
    // Anonymous: pull only, and the catalog (anonymous = "pull").
    let (_, _, g) = a.issue_token(&Principal::Anonymous, asked);
    assert_eq!(g.to_text(), "registry:catalog:* repository:other:pull repository:team/app:pull");
    // A token for a:pull cannot be turned into a:push by editing its scopes.
    let (t, _, _) = a.issue_token(&user("alice"), ["repository:team/a:pull"]);
    let pull = URL_SAFE.encode("repository:team/a:pull");
    let forged = t.replacen(&pull, &URL_SAFE.encode("repository:team/a:pull,push"), 1);
    assert_ne!(forged, t);
    assert!(matches!(a.identify(Some(&format!("Bearer {forged}"))), Err(AuthError::BadToken(_))));
    // Basic credentials carry no scope: the rules alone decide.
    let id = a.identify(Some(&basic("alice", "pw"))).expect("basic");
    assert_eq!(id.grants, None);
    assert!(id.token_allows(&repo("anything"), Access::Delete));
}
