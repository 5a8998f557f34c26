//! `wharfie client-config`: the snippets that point containerd, podman and the Docker
//! daemon at this server, for its configured upstreams.

use crate::config::Settings;

/// Render the three snippets for a server reachable at `host` (host:port).
pub fn render(settings: &Settings, host: &str) -> String {
    let scheme = if settings.tls.is_some() { "https" } else { "http" };
    let insecure = settings.tls.is_none();
    let mut o = String::new();
    let mut ups: Vec<(&str, &str, bool)> =
        settings.upstreams.iter().map(|u| (u.name.as_str(), u.url.as_str(), u.default)).collect();
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
        o.push_str(&format!(
            "# /etc/containerd/certs.d/{name}/hosts.toml\nserver = \"{url}\"\n\n[host.\"{scheme}://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ));
        if scheme == "https" {
            o.push_str(
                "  # ca = \"/path/to/wharfie-ca.pem\"  (when the certificate is not publicly trusted)\n",
            );
        }
        o.push('\n');
    }
    o.push_str("## podman / buildah / skopeo: /etc/containers/registries.conf.d/wharfie.conf\n");
    for (name, _, _) in &ups {
        o.push_str(&format!(
            "[[registry]]\nprefix = \"{name}\"\nlocation = \"{name}\"\n\n[[registry.mirror]]\nlocation = \"{host}/{name}\"\ninsecure = {insecure}\n\n"
        ));
    }
    o.push_str("## Docker daemon: /etc/docker/daemon.json (mirrors Docker Hub only; needs a\n");
    o.push_str("## `default = true` docker.io upstream)\n");
    let mut daemon = serde_json::json!({ "registry-mirrors": [format!("{scheme}://{host}")] });
    if insecure {
        daemon["insecure-registries"] = serde_json::json!([host]);
    }
    o.push_str(&serde_json::to_string_pretty(&daemon).unwrap_or_default());
    o.push('\n');
    if !ups.iter().any(|(n, _, d)| *n == "docker.io" && *d) {
        o.push_str("# note: no docker.io upstream has `default = true`; the Docker daemon's mirror\n# requests (bare names) would go to hosted repositories only.\n");
    }
    o
}
