//! The htpasswd file: `user:hash` lines as `htpasswd -B` writes them. Only bcrypt
//! (`$2y$`, `$2b$`, `$2a$`) is accepted; blank lines and `#` comments are skipped.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use super::rules::ANONYMOUS;
use super::AuthError;

/// User name → bcrypt hash, in file order for the first one (the timing dummy).
#[derive(Debug, Clone, Default)]
pub(crate) struct Htpasswd {
    pub(crate) users: HashMap<String, String>,
    /// The first user's hash: unknown users are verified against it, so a miss costs
    /// what a hit costs (no user enumeration by timing).
    pub(crate) first_hash: Option<String>,
}

/// Read and parse `path`.
pub(crate) fn load(path: &Path) -> Result<Htpasswd, AuthError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| AuthError::Io { path: path.to_path_buf(), source })?;
    parse(path, &text)
}

/// Name a hash scheme from its prefix, for the error message (never echo the hash).
fn scheme_name(hash: &str) -> String {
    if hash.starts_with("$apr1$") {
        "$apr1$ (Apache MD5, `htpasswd -m`)".into()
    } else if hash.starts_with("{SHA}") {
        "{SHA} (SHA-1, `htpasswd -s`)".into()
    } else if hash.starts_with("$5$") {
        "$5$ (SHA-256 crypt, `htpasswd -2`)".into()
    } else if hash.starts_with("$6$") {
        "$6$ (SHA-512 crypt, `htpasswd -5`)".into()
    } else if hash.starts_with("$1$") {
        "$1$ (MD5 crypt)".into()
    } else if let Some(rest) = hash.strip_prefix('$') {
        match rest.split_once('$') {
            Some((id, _)) if id.len() <= 8 => format!("${id}$"),
            _ => "an unknown scheme".into(),
        }
    } else if hash.len() == 13 {
        "crypt(3) DES (`htpasswd -d`)".into()
    } else {
        "plain text or an unknown scheme (`htpasswd -p`?)".into()
    }
}

/// Parse the text of an htpasswd file; `path` is for the error messages.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Htpasswd, AuthError> {
    let mut out = Htpasswd::default();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let bad = |reason: String| AuthError::Htpasswd { path: path.to_path_buf(), line: line_no, reason };
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // Never echo the line: it may hold a plain-text password.
        let Some((user, hash)) = line.split_once(':') else {
            return Err(bad("expected `user:hash` (no `:` on the line)".into()));
        };
        if user.is_empty() || user.trim() != user {
            return Err(bad("empty user name, or spaces around it".into()));
        }
        if user == ANONYMOUS {
            return Err(bad(format!(
                "user name {ANONYMOUS:?} is reserved (rules use it for unauthenticated clients)"
            )));
        }
        // Some tools append `:comment` fields; the hash is the second field.
        let hash = hash.split(':').next().unwrap_or_default().trim();
        let is_bcrypt = ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p));
        if !is_bcrypt {
            return Err(bad(format!(
                "user {user:?}: hash scheme {} is not supported; wharfie accepts only bcrypt \
                 ($2y$/$2b$/$2a$): recreate the entry with `htpasswd -B {} {user}`",
                scheme_name(hash),
                path.display()
            )));
        }
        if bcrypt::HashParts::from_str(hash).is_err() {
            return Err(bad(format!("user {user:?}: malformed bcrypt hash")));
        }
        if out.users.insert(user.to_string(), hash.to_string()).is_some() {
            return Err(bad(format!("user {user:?} appears twice")));
        }
        if out.first_hash.is_none() {
            out.first_hash = Some(hash.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/etc/wharfie/htpasswd")
    }

    #[test]
    fn parses_bcrypt_lines_and_skips_comments() {
        let h2y = bcrypt::hash("pw1", 4).expect("hash"); // the crate writes $2b$
        let h2y = h2y.replacen("$2b$", "$2y$", 1);
        let h2b = bcrypt::hash("pw2", 4).expect("hash");
        let h2a = h2b.replacen("$2b$", "$2a$", 1);
        let text =
            format!("# users\n\n  \nalice:{h2y}\r\nbob:{h2b}\n   # indented comment\ncarol:{h2a}:extra\n");
        let f = parse(p(), &text).expect("parses");
        assert_eq!(f.users.len(), 3);
        assert_eq!(f.users["alice"], h2y);
        assert_eq!(f.users["carol"], h2a);
        assert_eq!(f.first_hash.as_deref(), Some(h2y.as_str()));
        assert!(bcrypt::verify("pw1", &f.users["alice"]).expect("verify"));
        assert!(bcrypt::verify("pw2", &f.users["carol"]).expect("verify"));
    }

    #[test]
    fn empty_file_is_no_users() {
        let f = parse(p(), "").expect("parses");
        assert!(f.users.is_empty() && f.first_hash.is_none());
    }

    #[test]
    fn other_schemes_are_rejected_naming_the_line() {
        let good = bcrypt::hash("x", 4).expect("hash");
        let cases = [
            ("bob:$apr1$abc$def", "$apr1$"),
            ("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "{SHA}"),
            ("bob:$6$salt$hash", "$6$"),
            ("bob:$5$salt$hash", "$5$"),
            ("bob:abJnggxhB/yWI", "DES"),
            ("bob:secret", "plain text"),
            ("bob:$2x$10$abc", "$2x$"),
        ];
        for (line, scheme) in cases {
            let text = format!("alice:{good}\n# c\n{line}\n");
            let err = parse(p(), &text).expect_err(line).to_string();
            assert!(err.starts_with("/etc/wharfie/htpasswd:3: "), "{err}");
            assert!(err.contains("\"bob\"") && err.contains(scheme) && err.contains("htpasswd -B"), "{err}");
            assert!(!err.contains("secret"), "never echo what may be a password: {err}");
        }
    }

    #[test]
    fn malformed_lines_are_explained() {
        let good = bcrypt::hash("x", 4).expect("hash");
        let cases = [
            ("justapassword".to_string(), "no `:`"),
            (format!(":{good}"), "empty user name"),
            (format!(" alice:{good}"), "empty user name, or spaces"),
            ("alice:$2y$10$tooshort".to_string(), "malformed bcrypt"),
            (format!("anonymous:{good}"), "reserved"),
            (format!("a:{good}\na:{good}"), "appears twice"),
        ];
        for (text, needle) in cases {
            let err = parse(p(), &text).expect_err(needle).to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(!err.contains("justapassword"), "{err}");
        }
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load(Path::new("/nonexistent/wharfie-htpasswd")).expect_err("missing").to_string();
        assert!(err.contains("/nonexistent/wharfie-htpasswd"), "{err}");
    }
}
