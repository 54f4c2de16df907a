#!/usr/bin/env python3
"""Checks that a rendered podpbx kustomization agrees with itself.

The pinned addresses appear in several places that kustomize fills from one source
(k8s/base/addresses.yaml): the IPPools' CIDRs, the pod's Calico pool annotations and
podpbx.toml's [sip] addresses. This checks they agree, plus the wiring the pod depends on: the
probes reach the health listener (exec `podpbx ctl --admin ADDR health|ready`, or httpGet to a
health listener on a pinned address), an admin API off loopback has a token file, config mounted
as a directory at the --config path, password and token files inside the Secret mount, data_dir
on a volume, the security settings, no Service, the image's command.

    consistency.py RENDERED.yaml [--addresses F] [--dockerfile F] [--secret-example F] [--mutate NAME]

--addresses names the podpbx-addresses ConfigMap (k8s/base/addresses.yaml or an overlay's patch
of it): the pools must then carry exactly its addresses and names, which shows that the one place
reached the build.

--mutate applies one deliberate mismatch before checking (the check must then fail);
--list-mutations prints their names. Needs PyYAML; Python 3.11+ (tomllib) or tomli.
"""

import argparse
import copy
import ipaddress
import json
import posixpath
import sys

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

WORKLOAD_KINDS = ("Deployment", "StatefulSet")
ANNOTATION = {6: "cni.projectcalico.org/ipv6pools", 4: "cni.projectcalico.org/ipv4pools"}
UID = 65532
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9060"  # podpbx's default when [admin] listen is absent


class Rendered:
    """The objects of one kustomize build, with the pieces the checks need."""

    def __init__(self, docs):
        self.docs = [d for d in docs if d]

    def of_kind(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    def workload(self):
        found = [d for d in self.docs if d.get("kind") in WORKLOAD_KINDS]
        if len(found) != 1:
            raise CheckError(f"expected exactly one Deployment or StatefulSet, found {len(found)}")
        return found[0]


class CheckError(Exception):
    pass


def load(path):
    with open(path, encoding="utf-8") as f:
        return Rendered(list(yaml.safe_load_all(f)))


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def container(workload):
    cs = [c for c in pod_spec(workload).get("containers", []) if c.get("name") == "podpbx"]
    if len(cs) != 1:
        raise CheckError("the workload has no container named podpbx")
    return cs[0]


def config_path(c):
    args = list(c.get("command", [])) + list(c.get("args", []))
    for i, a in enumerate(args[:-1]):
        if a in ("--config", "-c"):
            return args[i + 1]
    raise CheckError("the podpbx container is not started with --config FILE")


def volume_at(workload, c, path):
    """The (mount, volume) whose mountPath is `path`."""
    mounts = [m for m in c.get("volumeMounts", []) if m.get("mountPath") == path]
    if len(mounts) != 1:
        raise CheckError(f"no single volume mounted at {path}")
    vols = [v for v in pod_spec(workload).get("volumes", []) if v.get("name") == mounts[0]["name"]]
    if len(vols) != 1:
        raise CheckError(f"the volume mounted at {path} ({mounts[0]['name']}) is not defined")
    return mounts[0], vols[0]


def walk_toml(node, path=""):
    """Yields (dotted path, key, value) for every key in a parsed TOML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else k
            yield p, k, v
            yield from walk_toml(v, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_toml(v, f"{path}[{i}]")


def ip(text, what):
    try:
        return ipaddress.ip_address(text)
    except ValueError as e:
        raise CheckError(f"{what}: {text!r} is not an IP address") from e


def socket_addr(text, what):
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit():
        raise CheckError(f"{what}: {text!r} is not address:port")
    return ip(host.strip("[]"), what), int(port)


def check(r, dockerfile=None, secret_example=None, addresses=None):
    """Returns a list of problems (empty: consistent)."""
    problems = []

    def expect(cond, msg):
        if not cond:
            problems.append(msg)

    # --- pools ------------------------------------------------------------------------------
    pools = {}
    for p in r.of_kind("IPPool"):
        name = p["metadata"]["name"]
        spec = p.get("spec", {})
        try:
            net = ipaddress.ip_network(spec.get("cidr", ""), strict=True)
        except ValueError:
            problems.append(f"IPPool {name}: cidr {spec.get('cidr')!r} is not a network")
            continue
        full = net.max_prefixlen
        expect(net.prefixlen == full, f"IPPool {name}: {net} is not a single address (/{full})")
        expect(spec.get("blockSize") == full, f"IPPool {name}: blockSize must be {full}")
        expect(spec.get("natOutgoing") is False, f"IPPool {name}: natOutgoing must be false")
        expect(spec.get("nodeSelector") == "!all()", f"IPPool {name}: nodeSelector must be !all()")
        expect(spec.get("ipipMode") == "Never", f"IPPool {name}: ipipMode must be Never")
        expect(spec.get("vxlanMode") == "Never", f"IPPool {name}: vxlanMode must be Never")
        expect(spec.get("disabled") is False, f"IPPool {name}: disabled must be false")
        expect(net.version not in pools, f"more than one IPv{net.version} IPPool")
        pools[net.version] = (name, net.network_address)
    for v in (6, 4):
        expect(v in pools, f"no IPv{v} IPPool")
    if problems:
        return problems
    if addresses:
        with open(addresses, encoding="utf-8") as f:
            want = yaml.safe_load(f).get("data", {})
        for v in (6, 4):
            name, addr = pools[v]
            expect(want.get(f"ipv{v}Pool") == name,
                   f"IPPool {name}: {addresses} names the IPv{v} pool {want.get(f'ipv{v}Pool')!r}")
            expect(ip(want.get(f"ipv{v}", ""), f"{addresses} ipv{v}") == addr,
                   f"IPPool {name}: {addr}, but {addresses} says ipv{v} = {want.get(f'ipv{v}')!r}")

    # --- workload ---------------------------------------------------------------------------
    try:
        w = r.workload()
        c = container(w)
        cfg_path = config_path(c)
    except CheckError as e:
        return problems + [str(e)]
    wname = f"{w['kind']} {w['metadata']['name']}"
    spec = w["spec"]
    expect(spec.get("replicas") == 1, f"{wname}: replicas must be 1")
    if w["kind"] == "Deployment":
        expect(spec.get("strategy", {}).get("type") == "Recreate", f"{wname}: strategy must be Recreate")
    else:
        expect(spec.get("updateStrategy", {}).get("type", "RollingUpdate") == "RollingUpdate",
               f"{wname}: updateStrategy must be RollingUpdate")
    annotations = w["spec"]["template"].get("metadata", {}).get("annotations", {})
    for v, key in ANNOTATION.items():
        try:
            names = json.loads(annotations.get(key, "null"))
        except json.JSONDecodeError:
            names = None
        expect(names == [pools[v][0]],
               f"{wname}: annotation {key} is {annotations.get(key)!r}, expected [\"{pools[v][0]}\"]")

    # --- security and lifecycle -------------------------------------------------------------
    ps = pod_spec(w)
    psc = ps.get("securityContext", {})
    csc = c.get("securityContext", {})
    expect(psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True, f"{wname}: runAsNonRoot")
    expect(csc.get("runAsUser", psc.get("runAsUser")) == UID, f"{wname}: runAsUser must be {UID}")
    expect(csc.get("readOnlyRootFilesystem") is True, f"{wname}: readOnlyRootFilesystem")
    expect(csc.get("allowPrivilegeEscalation") is False, f"{wname}: allowPrivilegeEscalation false")
    expect(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{wname}: capabilities must drop ALL")
    seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {}))
    expect(seccomp.get("type") == "RuntimeDefault", f"{wname}: seccompProfile RuntimeDefault")
    grace = ps.get("terminationGracePeriodSeconds", 30)
    expect(5 <= grace <= 30, f"{wname}: terminationGracePeriodSeconds {grace} is not a short grace (5-30)")
    expect(ps.get("hostNetwork") is not True, f"{wname}: hostNetwork would bypass the pinned addresses")
    expect(not r.of_kind("Service"), "a Service is rendered: SIP must reach the pinned addresses without NAT")

    # --- config: mounted as a directory at the --config path --------------------------------
    cfg_dir, cfg_file = posixpath.split(cfg_path)
    try:
        mount, vol = volume_at(w, c, cfg_dir)
    except CheckError as e:
        return problems + [str(e)]
    expect("subPath" not in mount and "subPathExpr" not in mount,
           f"{wname}: the config is mounted with subPath, which never sees ConfigMap updates")
    cm_name = vol.get("configMap", {}).get("name")
    cms = [m for m in r.of_kind("ConfigMap") if m["metadata"]["name"] == cm_name]
    if not cm_name or len(cms) != 1:
        return problems + [f"{wname}: {cfg_dir} is not a ConfigMap of this build ({cm_name})"]
    text = cms[0].get("data", {}).get(cfg_file)
    if text is None:
        return problems + [f"ConfigMap {cm_name} has no key {cfg_file} (the --config file)"]
    try:
        conf = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return problems + [f"ConfigMap {cm_name} {cfg_file}: {e}"]

    sip = conf.get("sip", {})
    for v in (6, 4):
        got = sip.get(f"ipv{v}")
        pool = pools[v]
        expect(got is not None and ip(got, f"sip.ipv{v}") == pool[1],
               f"{cfg_file}: sip.ipv{v} is {got!r}, but IPPool {pool[0]} is {pool[1]}")

    # --- admin listener, health listener and probes ------------------------------------------
    admin = conf.get("admin", {})
    listen = admin.get("listen", DEFAULT_ADMIN_LISTEN)
    api = socket_addr(listen, "admin.listen") if listen else None
    health_text = admin.get("health_listen", "")
    health = socket_addr(health_text, "admin.health_listen") if health_text else None
    pinned = (pools[4][1], pools[6][1])
    if api and not api[0].is_loopback:
        # The API answers the network only with a bearer token (podpbx check enforces the key;
        # here: the file is in the mounted Secret, like the passwords).
        expect("token_file" in admin,
               f"{cfg_file}: admin.listen {listen} is not loopback but admin.token_file is not set")
    admin_port = next((p.get("containerPort") for p in c.get("ports", []) if p.get("name") == "admin"), None)
    if admin_port is not None:
        expect(api is not None and api[1] == admin_port,
               f"{cfg_file}: admin.listen {listen} does not match containerPort admin {admin_port}")
    # The probes ask the health listener when there is one (its own connection budget), else the
    # admin listener's health endpoints.
    probed = health or api
    if probed is None:
        return problems + [f"{cfg_file}: admin.listen and admin.health_listen are both disabled, but the probes need one"]
    which = "admin.health_listen" if health else "admin.listen"
    verbs = {"startupProbe": "health", "livenessProbe": "health", "readinessProbe": "ready"}
    paths = {"health": "/healthz", "ready": "/readyz"}
    for probe, verb in verbs.items():
        spec = c.get(probe)
        if spec is None:
            expect(probe == "startupProbe", f"{wname}: no {probe}")
            continue
        if "exec" in spec:
            cmd = spec["exec"].get("command", [])
            expect(cmd[:2] == ["/usr/local/bin/podpbx", "ctl"],
                   f"{wname}: {probe} exec must run /usr/local/bin/podpbx ctl, not {cmd}")
            expect(cmd[-1:] == [verb], f"{wname}: {probe} must end with `{verb}`, not {cmd[-1:]}")
            try:
                target = socket_addr(cmd[cmd.index("--admin") + 1], f"{probe} --admin")
            except (ValueError, IndexError):
                problems.append(f"{wname}: {probe} exec names no --admin ADDR")
                continue
            local = probed[0].is_loopback or probed[0].is_unspecified
            expect(target[1] == probed[1] and (target[0] == probed[0] or (probed[0].is_unspecified and target[0].is_loopback)),
                   f"{wname}: {probe} asks {target[0]}:{target[1]}, but {which} is {probed[0]}:{probed[1]}")
            expect(local or target[0] == probed[0], f"{wname}: {probe} cannot reach {which}")
        elif "httpGet" in spec:
            get = spec["httpGet"]
            expect(get.get("path") == paths[verb], f"{wname}: {probe} path must be {paths[verb]}")
            expect(probed[0] in pinned or probed[0].is_unspecified,
                   f"{cfg_file}: {which} {probed[0]} is on none of the pinned addresses (the kubelet's httpGet cannot reach it)")
            expect(get.get("port") == probed[1], f"{wname}: {probe} port {get.get('port')} != {which} port {probed[1]}")
            if "host" in get:
                target = ip(get["host"], f"{probe}.httpGet.host")
                expect(target == probed[0] or (probed[0].is_unspecified and target in pinned),
                       f"{wname}: {probe} host {target} != {which} address {probed[0]}")
            else:
                # Without a host the kubelet uses status.podIP, which may be either family.
                expect(probed[0].is_unspecified, f"{wname}: {probe} has no host, but {which} is {probed[0]} only")
            if health is None and api and not api[0].is_loopback:
                problems.append(f"{wname}: {probe} shares the API's listener on the network: give the probes health_listen")
        else:
            problems.append(f"{wname}: {probe} is neither exec nor httpGet")

    # --- SIP ports --------------------------------------------------------------------------
    sip_port = sip.get("port", 5060)
    declared = {(p.get("containerPort"), p.get("protocol", "TCP")) for p in c.get("ports", [])}
    for t in sip.get("transports", ["udp"]):
        expect((sip_port, t.upper()) in declared, f"{wname}: no containerPort {sip_port}/{t.upper()} for sip")

    # --- secrets: every password_file inside the Secret mount -------------------------------
    secret_mounts = {}
    for m in c.get("volumeMounts", []):
        vols = [v for v in ps.get("volumes", []) if v.get("name") == m["name"]]
        if vols and "secret" in vols[0]:
            secret_mounts[m["mountPath"].rstrip("/")] = vols[0]["secret"].get("secretName")
    example = None
    if secret_example:
        with open(secret_example, encoding="utf-8") as f:
            example = yaml.safe_load(f)
        keys = set(example.get("stringData", {})) | set(example.get("data", {}))
    for path, key, value in walk_toml(conf):
        if key not in ("password_file", "token_file"):
            continue
        d, k = posixpath.split(value)
        expect(d in secret_mounts, f"{cfg_file}: {path} = {value} is not inside a mounted Secret")
        if example and d in secret_mounts:
            expect(secret_mounts[d] == example["metadata"]["name"],
                   f"{wname}: {d} mounts Secret {secret_mounts[d]}, the example is {example['metadata']['name']}")
            expect(k in keys, f"{cfg_file}: {path} = {value}: the Secret example has no key {k!r}")

    # --- data_dir on a writable volume ------------------------------------------------------
    data_dir = conf.get("storage", {}).get("data_dir")
    expect(data_dir is not None, f"{cfg_file}: storage.data_dir is not set")
    if data_dir:
        try:
            m, v = volume_at(w, c, data_dir.rstrip("/"))
            expect(not m.get("readOnly"), f"{wname}: {data_dir} is mounted read-only")
            expect("persistentVolumeClaim" in v or "emptyDir" in v,
                   f"{wname}: {data_dir} is neither a PersistentVolumeClaim nor an emptyDir")
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            if claim:
                expect(any(p["metadata"]["name"] == claim for p in r.of_kind("PersistentVolumeClaim")),
                       f"{wname}: claim {claim} is not part of this build")
        except CheckError as e:
            problems.append(f"{cfg_file}: storage.data_dir {data_dir}: {e}")

    # --- the image's own command ------------------------------------------------------------
    if dockerfile:
        problems.extend(check_dockerfile(dockerfile, c))
    return problems


def dockerfile_instructions(path):
    """(INSTRUCTION, argument) pairs of a Dockerfile, continuation lines joined."""
    out, cur = [], ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if not cur and (not s or s.startswith("#")):
                continue
            if s.endswith("\\"):
                cur += s[:-1] + " "
                continue
            cur += s
            word, _, rest = cur.partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    return out


def check_dockerfile(path, c):
    problems = []
    ins = dockerfile_instructions(path)
    stages = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    final = ins[stages[-1]:] if stages else ins

    def last(word):
        found = [a for w, a in final if w == word]
        return found[-1] if found else None

    try:
        entry = json.loads(last("ENTRYPOINT") or "null")
        cmd = json.loads(last("CMD") or "null")
    except json.JSONDecodeError:
        return [f"{path}: ENTRYPOINT and CMD must use the JSON (exec) form"]
    if entry != ["/usr/local/bin/podpbx"]:
        problems.append(f"{path}: ENTRYPOINT is {entry}, expected [\"/usr/local/bin/podpbx\"]")
    if c.get("command") not in (None, entry):
        problems.append(f"container command {c.get('command')} differs from the image ENTRYPOINT {entry}")
    if cmd != c.get("args"):
        problems.append(f"{path}: CMD {cmd} differs from the container args {c.get('args')}")
    user = (last("USER") or "").split(":")[0]
    if user != str(UID):
        problems.append(f"{path}: the final stage must run as USER {UID} (found {user or 'none'})")
    # The binary comes from docker/build-static.sh (the one build both image paths use): a
    # locked optimised build (`--release`, or Cargo.toml's `image` profile, which inherits
    # release), statically linked.
    if not any(w == "RUN" and "docker/build-static.sh" in a for w, a in ins):
        problems.append(f"{path}: the build stage does not run docker/build-static.sh")
    script = posixpath.join(posixpath.dirname(path), "build-static.sh")
    try:
        with open(script, encoding="utf-8") as f:
            text = f.read()
        if not any(b in text for b in ("cargo build --release --locked",
                                       "cargo build --profile image --locked")):
            problems.append(f"{script}: no `cargo build --release --locked` "
                            "(or `--profile image --locked`)")
        if "+crt-static" not in text:
            problems.append(f"{script}: no `+crt-static`")
        if "--profile image" in text:
            cargo = posixpath.join(posixpath.dirname(posixpath.dirname(path)) or ".", "Cargo.toml")
            with open(cargo, "rb") as f:
                prof = tomllib.load(f).get("profile", {}).get("image", {})
            if prof.get("inherits") != "release":
                problems.append(f"{cargo}: [profile.image] must inherit release")
    except OSError as e:
        problems.append(f"{script}: {e}")
    base = ins[stages[-1]][1].split()[0] if stages else None
    if base != "scratch":
        problems.append(f"{path}: the final stage is FROM {base}, expected scratch (a static binary needs nothing)")
    return problems


# --- deliberate mismatches: each must make check() fail ----------------------------------------

def _pool(r, version):
    for p in r.of_kind("IPPool"):
        if ipaddress.ip_network(p["spec"]["cidr"], strict=False).version == version:
            return p
    raise CheckError(f"no IPv{version} pool to mutate")


def _cm_text(r):
    w = r.workload()
    cfg_dir, cfg_file = posixpath.split(config_path(container(w)))
    _, vol = volume_at(w, container(w), cfg_dir)
    cm = [m for m in r.of_kind("ConfigMap") if m["metadata"]["name"] == vol["configMap"]["name"]][0]
    return cm["data"], cfg_file


def _toml_replace(r, key, new):
    data, f = _cm_text(r)
    lines = data[f].splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.split("=")[0].strip() == key:
            lines[i] = f'{key} = "{new}"\n'
            data[f] = "".join(lines)
            return
    raise CheckError(f"no {key} line to mutate")


def _container(r):
    return container(r.workload())


def _probe_command(r, probe, cmd):
    _container(r)[probe] = {"exec": {"command": cmd}}


MUTATIONS = {
    "pool-cidr-v6": lambda r: _pool(r, 6)["spec"].update(cidr="2001:db8:dead::1/128"),
    "pool-cidr-v4": lambda r: _pool(r, 4)["spec"].update(cidr="203.0.113.99/32"),
    "pool-name-v6": lambda r: _pool(r, 6)["metadata"].update(name="renamed-v6"),
    "pool-block-v4": lambda r: _pool(r, 4)["spec"].update(blockSize=26),
    "pool-nat-v6": lambda r: _pool(r, 6)["spec"].update(natOutgoing=True),
    "annotation-v4": lambda r: r.workload()["spec"]["template"]["metadata"]["annotations"].update(
        {ANNOTATION[4]: '["some-other-pool"]'}),
    "toml-sip-ipv6": lambda r: _toml_replace(r, "ipv6", "2001:db8:e8b1::1:2"),
    "toml-sip-ipv4": lambda r: _toml_replace(r, "ipv4", "198.51.100.11"),
    "toml-admin-listen": lambda r: _toml_replace(r, "listen", "203.0.113.200:9060"),
    "toml-data-dir": lambda r: _toml_replace(r, "data_dir", "/data"),
    "toml-password-file": lambda r: _toml_replace(r, "password_file", "/etc/podpbx/secret"),
    "toml-health-listen": lambda r: _toml_replace(r, "health_listen", "127.0.0.1:9062"),
    "probe-address": lambda r: _probe_command(r, "livenessProbe", ["/usr/local/bin/podpbx", "ctl", "--admin", "127.0.0.1:9060", "health"]),
    "probe-verb": lambda r: _probe_command(r, "readinessProbe", ["/usr/local/bin/podpbx", "ctl", "--admin", "127.0.0.1:9061", "health"]),
    "probe-http-on-loopback": lambda r: _container(r).update(livenessProbe={"httpGet": {"path": "/healthz", "port": 9061}}),
    "config-subpath": lambda r: [m.update(subPath="podpbx.toml") for m in _container(r)["volumeMounts"]
                                 if m["mountPath"] == posixpath.dirname(config_path(_container(r)))],
    "config-arg": lambda r: _container(r).update(args=["run", "--config", "/etc/podpbx/other.toml"]),
    "replicas": lambda r: r.workload()["spec"].update(replicas=2),
    "service": lambda r: r.docs.append({"apiVersion": "v1", "kind": "Service",
                                        "metadata": {"name": "podpbx"}, "spec": {"ports": [{"port": 5060}]}}),
    "writable-root": lambda r: _container(r)["securityContext"].update(readOnlyRootFilesystem=False),
    "long-grace": lambda r: r.workload()["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=300),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rendered", nargs="?")
    ap.add_argument("--addresses")
    ap.add_argument("--dockerfile")
    ap.add_argument("--secret-example")
    ap.add_argument("--mutate", choices=sorted(MUTATIONS))
    ap.add_argument("--list-mutations", action="store_true")
    a = ap.parse_args(argv)
    if a.list_mutations:
        print("\n".join(sorted(MUTATIONS)))
        return 0
    if not a.rendered:
        ap.error("RENDERED.yaml is required")
    r = load(a.rendered)
    if a.mutate:
        r = Rendered(copy.deepcopy(r.docs))
        MUTATIONS[a.mutate](r)
    try:
        problems = check(r, a.dockerfile, a.secret_example, a.addresses)
    except CheckError as e:
        problems = [str(e)]
    for p in problems:
        print(f"inconsistent: {p}")
    if not problems:
        print(f"{a.rendered}: consistent")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
