#!/usr/bin/env python3
"""Small helpers for tests/k8s/validate.sh (needs PyYAML).

    manifests.py split RENDERED.yaml OUTDIR
        one file per object, OUTDIR/NN-kind-name.yaml; prints `kind<TAB>apiVersion<TAB>file`
    manifests.py crd-schema CRD.yaml OUT.json
        the CRD's openAPIV3Schema as JSON Schema, made as strict as the API server is:
        unknown fields rejected, apiVersion/kind fixed, metadata.name required
    manifests.py podpbx-config RENDERED.yaml SECRET_EXAMPLE.yaml OUTDIR
        the podpbx.toml of the build, with every password_file moved into OUTDIR/secrets/
        (filled with the example Secret's placeholders), so `podpbx check` can read them
"""

import json
import os
import re
import sys

import yaml

import consistency


def split(rendered, outdir):
    os.makedirs(outdir, exist_ok=True)
    with open(rendered, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for i, d in enumerate(docs):
        kind = d.get("kind", "unknown")
        name = re.sub(r"[^A-Za-z0-9.-]", "_", d.get("metadata", {}).get("name", "unnamed"))
        path = os.path.join(outdir, f"{i:02d}-{kind.lower()}-{name}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(d, f, sort_keys=False)
        print(f"{kind}\t{d.get('apiVersion', '')}\t{path}")


def strict(schema):
    """Rejects unknown fields wherever the schema lists the known ones (structural pruning and
    strict field validation do the same on the API server). Patterns are Go regular expressions;
    Python's re (check-jsonschema --regex-variant python) wants a global flag such as (?i) first."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items() if k != "description"}
        pattern = out.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("^(?i)"):
            out["pattern"] = "(?i)^" + pattern[len("^(?i)"):]
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_schema(crd_path, out_path):
    with open(crd_path, encoding="utf-8") as f:
        crd = yaml.safe_load(f)
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    versions = crd["spec"]["versions"]
    version = next((v for v in versions if v.get("storage")), versions[0])
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = f"{kind} {group}/{version['name']} (strict)"
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"const": f"{group}/{version['name']}"}
    props["kind"] = {"const": kind}
    props["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                                "maxLength": 253}},
    }
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(schema, f, indent=1)


def podpbx_config(rendered, secret_example, outdir):
    r = consistency.load(rendered)
    data, name = consistency._cm_text(r)
    with open(secret_example, encoding="utf-8") as f:
        secret = yaml.safe_load(f)
    secrets = os.path.join(os.path.abspath(outdir), "secrets")
    os.makedirs(secrets, exist_ok=True)
    for k, v in secret.get("stringData", {}).items():
        with open(os.path.join(secrets, k), "w", encoding="utf-8") as f:
            f.write(f"{v}\n")
    mount = next(m["mountPath"] for m in consistency.container(r.workload())["volumeMounts"]
                 if m["name"] in {v["name"] for v in consistency.pod_spec(r.workload())["volumes"]
                                  if "secret" in v})
    text = data[name].replace(f'"{mount.rstrip("/")}/', f'"{secrets}/')
    out = os.path.join(outdir, name)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(out)


def main(argv):
    cmds = {"split": (split, 2), "crd-schema": (crd_schema, 2), "podpbx-config": (podpbx_config, 3)}
    if len(argv) < 1 or argv[0] not in cmds or len(argv) - 1 != cmds[argv[0]][1]:
        sys.stderr.write(__doc__)
        return 2
    fn, _ = cmds[argv[0]]
    fn(*argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
