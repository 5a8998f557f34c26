//! `wharfie client-config`: the snippets that point containerd, podman and the Docker
//! daemon at this server, for its configured upstreams.

use std::fmt::Write as _;

use crate::config::Settings;

/// Render the three snippets for a server reachable at `host` (host:port).
pub(super) fn render(settings: &Settings, host: &str) -> String {
    let scheme = if settings.tls.is_some() { "https" } else { "http" };
    let insecure = settings.tls.is_none();
    let mut o = String::new();
    let mut ups: Vec<(&str, &str, bool)> = settings
        .upstreams
        .iter()
        .map(|u| (u.name.as_str(), u.url.as_str().trim_end_matches('/'), u.default))
        .collect();
    if ups.is_empty() {
        o.push_str("# No [[upstreams]] are configured: these snippets mirror docker.io once you add\n");
        o.push_str("# [[upstreams]] name = \"docker.io\" url = \"https://registry-1.docker.io\".\n\n");
        ups.push(("docker.io", "https://registry-1.docker.io", true));
    }
    o.push_str("## containerd: one file per upstream, /etc/containerd/certs.d/<name>/hosts.toml\n");
    o.push_str(
        "## (containerd sends ?ns=<name>; config_path = \"/etc/containerd/certs.d\" in config.toml)\n",
    );
    for (name, url, _) in &ups {
        // Writing to a String cannot fail.
        let _ = write!(
            o,
            "# /etc/containerd/certs.d/{name}/hosts.toml\nserver = \"{url}\"\n\n[host.\"{scheme}://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        if scheme == "https" {
            o.push_str(
                "  # ca = \"/path/to/wharfie-ca.pem\"  (when the certificate is not publicly trusted)\n",
            );
        }
        o.push('\n');
    }
    o.push_str("## podman / buildah / skopeo: /etc/containers/registries.conf.d/wharfie.conf\n");
    for (name, _, _) in &ups {
        // Writing to a String cannot fail.
        let _ = write!(
            o,
            "[[registry]]\nprefix = \"{name}\"\nlocation = \"{name}\"\n\n[[registry.mirror]]\nlocation = \"{host}/{name}\"\ninsecure = {insecure}\n\n"
        );
    }
    docker(&mut o, settings, scheme, host, ups.iter().any(|(n, _, d)| *n == "docker.io" && *d));
    o
}

/// The Docker daemon's `daemon.json` (one JSON block: `registry-mirrors` when a
/// `default = true` docker.io upstream exists, `insecure-registries` over plain HTTP), the
/// name to tag images with, `docker login` when auth is on, and what Docker does when the
/// mirror fails.
fn docker(o: &mut String, settings: &Settings, scheme: &str, host: &str, mirror: bool) {
    o.push_str("## Docker daemon: /etc/docker/daemon.json, then `systemctl restart docker`\n");
    let mut daemon = serde_json::Map::new();
    if mirror {
        daemon.insert("registry-mirrors".into(), serde_json::json!([format!("{scheme}://{host}")]));
    }
    if scheme == "http" {
        // Docker trusts plain HTTP only for 127.0.0.0/8 and the registries named here.
        daemon.insert("insecure-registries".into(), serde_json::json!([host]));
    }
    o.push_str(&serde_json::to_string_pretty(&serde_json::Value::Object(daemon)).unwrap_or_default());
    o.push('\n');
    if mirror {
        o.push_str(
            "# registry-mirrors serves Docker Hub names only (`docker pull nginx` asks this server\n\
             # for library/nginx). When the mirror answers an error, the daemon falls back to\n\
             # registry-1.docker.io: that is why wharfie answers a miss of a down upstream at once\n\
             # (503 with Retry-After) rather than after a long timeout, and serves what it has\n\
             # cached without asking the upstream.\n",
        );
    } else {
        o.push_str(
            "# note: no docker.io upstream has `default = true`; the Docker daemon's mirror\n\
             # requests (bare names) would go to hosted repositories only.\n",
        );
    }
    // Writing to a String cannot fail.
    let _ = write!(
        o,
        "## Docker: hosted repositories are named after this server\n\
         docker tag IMAGE {host}/team/app:v1\n\
         docker push {host}/team/app:v1\n\
         docker pull {host}/team/app:v1\n"
    );
    if settings.auth.htpasswd.is_some() {
        // Writing to a String cannot fail.
        let _ = writeln!(o, "docker login {host}   # the htpasswd user; docker logout {host}");
        if settings.auth.token {
            o.push_str("# token = true: Docker pulls anonymously too (it fetches an anonymous token).\n");
        } else {
            o.push_str(
                "# Basic only: Docker never pulls anonymously from a registry that challenges;\n\
                 # set token = true for anonymous pulls.\n",
            );
        }
    }
}
