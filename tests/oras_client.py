"""ORAS (oras-py, the OCI Registry As Storage Python SDK) against a running wharfie.

Run by tests/oras.rs as `python3 tests/oras_client.py HOST:PORT WORKDIR`. Exits non-zero with
a message on the first thing that is not as an ORAS user expects:

1. push an artifact of two files (one monolithic, one in 64 KiB chunks) with a custom
   config media type, then pull it into an empty directory: byte-identical files;
2. push a second artifact whose manifest names the first as its `subject` (a signature,
   as `oras attach` makes one) and find it through the referrers API, filtered and not;
3. list tags, delete one, list again.
"""

import hashlib
import json
import os
import sys

import requests
from oras.client import OrasClient
from oras.oci import Subject

SIG_TYPE = "application/vnd.example.signature.v1+json"
ART_TYPE = "application/vnd.example.bundle.config.v1+json"


def fail(msg):
    print(f"oras interop: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    host, work = sys.argv[1], sys.argv[2]
    base = f"http://{host}"
    repo = f"{host}/oras/bundle"
    os.chdir(work)  # oras-py only pushes files below the working directory

    with open("small.txt", "wb") as f:
        f.write(b"hello from oras\n")
    with open("big.bin", "wb") as f:
        f.write(os.urandom(300_000))  # several 64 KiB chunks and a short last one
    with open("config.json", "w") as f:
        json.dump({"made-by": "wharfie interop"}, f)

    client = OrasClient(insecure=True)
    r = client.push(
        target=f"{repo}:v1",
        files=["small.txt:text/plain", "big.bin:application/octet-stream"],
        manifest_config=f"config.json:{ART_TYPE}",
        manifest_annotations={"org.example.purpose": "interop"},
        do_chunked=True,
        chunk_size=64 * 1024,
    )
    check(r.status_code == 201, f"push v1: HTTP {r.status_code} {r.text}")

    head = requests.head(
        f"{base}/v2/oras/bundle/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=30,
    )
    check(head.status_code == 200, f"HEAD manifest v1: {head.status_code}")
    digest = head.headers.get("Docker-Content-Digest", "")
    size = int(head.headers.get("Content-Length", "0"))
    check(digest.startswith("sha256:") and size > 0, f"HEAD v1: digest {digest!r} size {size}")

    out = os.path.join(work, "pulled")
    os.makedirs(out)
    files = client.pull(target=f"{repo}:v1", outdir=out)
    names = sorted(os.path.basename(p) for p in files)
    check(names == ["big.bin", "small.txt"], f"pull v1 gave {names}")
    for name in ("small.txt", "big.bin"):
        check(
            sha256_file(name) == sha256_file(os.path.join(out, name)),
            f"pulled {name} differs from the pushed file",
        )

    # A signature attached to v1 through `subject`, pushed under its own tag.
    with open("sig.json", "w") as f:
        json.dump({"signed": digest}, f)
    with open("sig-config.json", "w") as f:
        json.dump({}, f)
    subject = Subject(mediaType="application/vnd.oci.image.manifest.v1+json", digest=digest, size=size)
    r = client.push(
        target=f"{repo}:sig",
        files=["sig.json:application/json"],
        manifest_config=f"sig-config.json:{SIG_TYPE}",
        subject=subject,
    )
    check(r.status_code == 201, f"push sig: HTTP {r.status_code} {r.text}")
    check(r.headers.get("OCI-Subject") == digest, f"push sig: OCI-Subject {r.headers.get('OCI-Subject')!r}")

    ref = requests.get(f"{base}/v2/oras/bundle/referrers/{digest}", timeout=30)
    check(ref.status_code == 200, f"referrers: {ref.status_code} {ref.text}")
    check(
        ref.headers.get("Content-Type", "").startswith("application/vnd.oci.image.index.v1+json"),
        f"referrers Content-Type {ref.headers.get('Content-Type')!r}",
    )
    found = ref.json().get("manifests", [])
    check(len(found) == 1 and found[0].get("artifactType") == SIG_TYPE, f"referrers list: {found}")
    filt = requests.get(
        f"{base}/v2/oras/bundle/referrers/{digest}", params={"artifactType": ART_TYPE}, timeout=30
    )
    check(filt.headers.get("OCI-Filters-Applied") == "artifactType", "referrers filter not applied")
    check(filt.json().get("manifests") == [], f"filtered referrers: {filt.json()}")

    tags = client.get_tags(f"{repo}")
    check(sorted(tags) == ["sig", "v1"], f"tags: {tags}")
    check(client.delete_tag(f"{repo}", "sig"), "delete_tag sig")
    tags = client.get_tags(f"{repo}")
    check(tags == ["v1"], f"tags after delete: {tags}")
    print("oras interop: ok")


if __name__ == "__main__":
    main()
