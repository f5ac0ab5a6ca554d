#!/usr/bin/env python3
"""The local stack and the Kubernetes manifests, checked without Docker or a cluster.

1. Static: deploy/docker-compose.yml, every file it mounts, the Dockerfile and the Kubernetes
   manifests agree with each other and with spillway (ports, bucket, stream, credentials,
   paths, metric names); the manifests validate against the Kubernetes schemas
   (kubernetes-validate); the alert rules pass `promtool check rules`.
2. Live: the stack's own configurations run natively. spillway with deploy/spillway/spillway.toml
   (S3 endpoint, listen address and data dir pointed at this run) against a real S3 server
   (s3s-fs), Prometheus from Debian with deploy/prometheus/prometheus.yml (targets rewritten),
   deploy/producer/produce.sh and the load generator sending to it. Then Prometheus's HTTP API
   must show the series moving, delivered records equal to records sent, every PromQL
   expression of grafana/spillway.json returning data, and every alert rule evaluating cleanly.
3. Secure: deploy/docker-compose.secure.yml's configuration (TLS and access keys, with
   certificates and secrets made by deploy/secure/make-certs.sh) runs natively the same way:
   the producer signs over HTTPS with the stack's CA and its records land; the admin address
   serves the probes and metrics in plain HTTP. The Kubernetes ConfigMap's config (TLS and
   keys from Secrets) passes `spillway check-config` with such files in the Secrets' places.

Run by tests/run.sh after the release build: python tests/stack.py
Needs: target/release/{spillway,spillway-loadgen}, s3s-fs (S3S_FS), prometheus and promtool,
the AWS CLI and boto3, PyYAML and kubernetes-validate.
"""

import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.parse
import urllib.request

import boto3
import botocore
import botocore.config
import botocore.exceptions
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
RELEASE = os.path.join(ROOT, "target", "release")
checks = 0


def check(ok, what):
    global checks
    if not ok:
        raise SystemExit(f"FAILED: {what}")
    checks += 1


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def make_certs(directory):
    """deploy/secure/make-certs.sh's files (CA, certificate, key, access-key secrets) in `directory`."""
    out = subprocess.run(["bash", os.path.join(DEPLOY, "secure", "make-certs.sh"), directory],
                         capture_output=True, text=True)
    check(out.returncode == 0, f"make-certs.sh ran: {out.stderr}")
    return directory


# ---------------------------------------------------------------------------------------------
# 1. Static agreement.


def compose_checks():
    compose = load_yaml_docs(os.path.join(DEPLOY, "docker-compose.yml"))[0]
    services = compose["services"]
    for name in ["minio", "create-bucket", "spillway", "producer", "prometheus", "grafana"]:
        check(name in services, f"compose has a {name} service")

    # Every bind mount points at a file in the repo.
    mounts = {}
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src, dst = vol.split(":")[:2]
            if src.startswith("."):
                path = os.path.normpath(os.path.join(DEPLOY, src))
                check(os.path.isfile(path), f"{name} mounts {src}, which exists")
                mounts[(name, dst)] = path

    # spillway: its config is mounted where its command says, and agrees with the stack.
    sp = services["spillway"]
    cmd = sp["command"]
    config_in_container = cmd[cmd.index("--config") + 1]
    config_path = mounts[("spillway", config_in_container)]
    with open(config_path, "rb") as f:
        config = tomllib.load(f)
    listen_port = port_of(config["listen"])
    check(f"{listen_port}:{listen_port}" in sp["ports"], "spillway publishes its listen port")
    dockerfile = open(os.path.join(DEPLOY, "Dockerfile")).read()
    check(f"EXPOSE {listen_port}" in dockerfile, "the Dockerfile exposes the listen port")
    check(
        f"http://127.0.0.1:{listen_port}/healthz" in dockerfile,
        "the image's health check probes /healthz on the listen port",
    )
    data_volume = [v for v in sp["volumes"] if not v.startswith(".")][0].split(":")[1]
    check(config["data_dir"] == data_volume, "the data dir is the mounted volume")
    check('VOLUME ["/var/lib/spillway"]' in dockerfile, "the image declares the data volume")
    check(re.search(r"^USER 10001", dockerfile, re.M) is not None, "the image runs as non-root")
    check(
        subprocess.run([os.path.join(RELEASE, "spillway"), "check-config", config_path]).returncode
        == 0,
        "spillway check-config accepts the stack's config",
    )

    # MinIO: endpoint, credentials and bucket agree with spillway's config.
    store = config["object_store"]
    minio_env = services["minio"]["environment"]
    check(store["endpoint"] == "http://minio:9000", "spillway's S3 endpoint is the minio service")
    check(store["access_key_id"] == minio_env["MINIO_ROOT_USER"], "access key = MinIO user")
    check(
        store["secret_access_key"] == minio_env["MINIO_ROOT_PASSWORD"],
        "secret key = MinIO password",
    )
    check("9000:9000" in services["minio"]["ports"], "MinIO's API port is published")
    stream = config["stream"][0]
    bucket = stream["bucket_arn"].removeprefix("arn:aws:s3:::")
    mc = " ".join(services["create-bucket"]["command"])
    check(f"local/{bucket}" in mc, f"create-bucket creates {bucket}")
    check(
        f"{minio_env['MINIO_ROOT_USER']} {minio_env['MINIO_ROOT_PASSWORD']}" in mc,
        "create-bucket logs in with MinIO's credentials",
    )
    check(
        services["spillway"]["depends_on"]["create-bucket"]["condition"]
        == "service_completed_successfully",
        "spillway starts after the bucket exists",
    )

    # Each producer sends to spillway's port and to a stream the config declares; every
    # declared stream has a producer.
    declared = {st["name"] for st in config["stream"]}
    producers = [n for n in services if n.startswith("producer")]
    targets_of = set()
    for name in producers:
        penv = services[name]["environment"]
        targets_of.add(penv["STREAM"])
        check(penv["STREAM"] in declared, f"{name} sends to a declared stream")
        check(
            penv["SPILLWAY_ENDPOINT"] == f"http://spillway:{listen_port}",
            f"{name} sends to spillway's listen port",
        )
        check(
            any(dst.endswith("produce.sh") for (svc, dst) in mounts if svc == name),
            f"{name}'s script is mounted",
        )
    check(targets_of == declared, "every declared stream has a producer")

    # Transforms named by the config are built into the image at that path, from the repo's
    # example sources, and the files the image copies in are not excluded from the context.
    for st in config["stream"]:
        for proc in st.get("processing_configuration", {}).get("processors", []):
            if proc["type"] != "Lambda":
                continue
            path = proc["parameters"]["LambdaArn"].removeprefix("file://")
            check(re.search(rf"^COPY --from=\S+ \S+ {re.escape(path)}$", dockerfile, re.M) is not None,
                  f"the image contains {path}")
            name = os.path.basename(path).removesuffix(".wasm")
            check(f"examples/transforms/{name}/build.sh" in dockerfile, f"the image builds {name} with its build script")
            check(os.path.isfile(os.path.join(ROOT, "examples", "transforms", name, "build.sh")),
                  f"examples/transforms/{name} exists")
    ignored = [l.strip() for l in open(os.path.join(ROOT, ".dockerignore")) if not l.startswith("#")]
    for needed in ["src", "wit", "examples", "Cargo.toml", "Cargo.lock"]:
        check(needed not in ignored and f"{needed}/" not in ignored, f"{needed} is in the build context")
    check("COPY wit ./wit" in dockerfile, "the build stage has the transform contract (wit/)")

    # Prometheus: its config and rules are mounted where it looks; it scrapes spillway.
    pcmd = services["prometheus"]["command"]
    prom_in_container = [a for a in pcmd if a.startswith("--config.file=")][0].split("=", 1)[1]
    prom_config_path = mounts[("prometheus", prom_in_container)]
    prom = load_yaml_docs(prom_config_path)[0]
    targets = [t for sc in prom["scrape_configs"] for s in sc["static_configs"] for t in s["targets"]]
    check(targets == [f"spillway:{listen_port}"], "Prometheus scrapes spillway's listen port")
    for rule_file in prom["rule_files"]:
        check(("prometheus", rule_file) in mounts, f"rule file {rule_file} is mounted")

    # Grafana: the data source is that Prometheus; the dashboard is where the provider looks.
    ds = load_yaml_docs(mounts[("grafana", "/etc/grafana/provisioning/datasources/prometheus.yml")])[0]
    source = ds["datasources"][0]
    check(source["url"] == "http://prometheus:9090", "Grafana's data source is the prometheus service")
    check("9090:9090" in services["prometheus"]["ports"], "Prometheus's port is published")
    provider = load_yaml_docs(mounts[("grafana", "/etc/grafana/provisioning/dashboards/spillway.yml")])[0]
    dash_dir = provider["providers"][0]["options"]["path"]
    dash_mounts = [dst for (svc, dst) in mounts if svc == "grafana" and dst.endswith(".json")]
    check(
        all(os.path.dirname(d) == dash_dir for d in dash_mounts) and dash_mounts,
        "the dashboard is mounted in the provider's folder",
    )
    dashboard = json.load(open(os.path.join(ROOT, "grafana", "spillway.json")))
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    check(uids == {source["uid"]}, "every panel queries the provisioned data source")
    secure_checks(compose, config, prom_config_path)
    return config, prom_config_path


def secure_checks(compose, config, prom_config_path):
    """docker-compose.secure.yml: what it mounts exists, its secrets are where spillway-secure.toml
    reads them, and it changes nothing but the transport, the keys and the admin address."""
    override = load_yaml_docs(os.path.join(DEPLOY, "docker-compose.secure.yml"))[0]
    services = override["services"]
    check(set(services) <= set(compose["services"]), "the override only changes services of the stack")
    secrets = override["secrets"]
    script = open(os.path.join(DEPLOY, "secure", "make-certs.sh")).read()
    for name, spec in secrets.items():
        check(spec["file"].startswith("./secure/"), f"secret {name} is a file make-certs.sh writes")
        check(os.path.basename(spec["file"]) in script or spec["file"].endswith(".secret"),
              f"make-certs.sh writes {spec['file']}")
    sp = services["spillway"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in sp["volumes"]}
    secure_path = os.path.normpath(os.path.join(DEPLOY, mounted["/etc/spillway/spillway.toml"]))
    with open(secure_path, "rb") as f:
        secure = tomllib.load(f)
    check(secure["stream"] == config["stream"] and secure["object_store"] == config["object_store"],
          "the secure config has the stack's streams and store")
    check(secure["listen"] == config["listen"], "the API stays on the stack's port")
    admin_port = port_of(secure["admin_listen"])
    in_run = {f"/run/secrets/{n}" for n in sp["secrets"]}
    for path in [secure["tls"]["cert_file"], secure["tls"]["key_file"]] + [k["secret_file"] for k in secure["auth"]["keys"]]:
        check(path in in_run, f"{path} is a secret spillway gets")
    check(sp["healthcheck"]["test"][-1] == f"http://127.0.0.1:{admin_port}/readyz",
          "the health check probes the admin address")
    keys = {k["access_key_id"]: k for k in secure["auth"]["keys"]}
    for name in [n for n in compose["services"] if n.startswith("producer")]:
        env = services[name]["environment"]
        check(env["SPILLWAY_ENDPOINT"] == f"https://spillway:{port_of(config['listen'])}",
              f"{name} sends over HTTPS")
        key = keys[env["AWS_ACCESS_KEY_ID"]]
        check(env["AWS_SECRET_ACCESS_KEY_FILE"] == key["secret_file"]
              and os.path.basename(env["AWS_SECRET_ACCESS_KEY_FILE"]) in services[name]["secrets"],
              f"{name} signs with its key's secret")
        check(os.path.basename(env["AWS_CA_BUNDLE"]) in services[name]["secrets"], f"{name} trusts the CA")
        stream = compose["services"][name]["environment"]["STREAM"]
        check(stream in key.get("streams", [stream]) and "put" in key.get("operations", ["put"]),
              f"{name}'s key may put into {stream}")
    prom_secure = services["prometheus"]["volumes"][0].split(":")
    prom = load_yaml_docs(os.path.normpath(os.path.join(DEPLOY, prom_secure[0])))[0]
    targets = [t for sc in prom["scrape_configs"] for st in sc["static_configs"] for t in st["targets"]]
    check(targets == [f"spillway:{admin_port}"], "Prometheus scrapes the admin address")
    base_prom = load_yaml_docs(prom_config_path)[0]
    check(prom["rule_files"] == base_prom["rule_files"], "the same alert rules")


def kubernetes_checks():
    files = sorted(f for f in os.listdir(os.path.join(DEPLOY, "kubernetes")) if f.endswith(".yaml"))
    paths = [os.path.join(DEPLOY, "kubernetes", f) for f in files]
    out = subprocess.run(["kubernetes-validate", "--strict", *paths], capture_output=True, text=True)
    print(out.stdout + out.stderr, end="")
    check(out.returncode == 0, "the manifests validate against the Kubernetes schemas")
    docs = {}
    for p in paths:
        for d in load_yaml_docs(p):
            docs[(d["kind"], d["metadata"]["name"])] = d
    sts = docs[("StatefulSet", "spillway")]
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    cm = docs[("ConfigMap", "spillway")]
    config = tomllib.loads(cm["data"]["spillway.toml"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secret_of = {v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
    # TLS from the spillway-tls Secret (kubernetes.io/tls: tls.crt, tls.key), key secrets
    # from spillway-keys, each where the config reads it.
    check(secret_of.get("tls") == "spillway-tls" and secret_of.get("keys") == "spillway-keys",
          "the TLS and key Secrets are mounted")
    check(config["tls"]["cert_file"] == mounts["tls"] + "/tls.crt"
          and config["tls"]["key_file"] == mounts["tls"] + "/tls.key",
          "the config reads the certificate where the TLS Secret is mounted")
    for key in config["auth"]["keys"]:
        check(os.path.dirname(key["secret_file"]) == mounts["keys"],
              f"{key['access_key_id']}'s secret is in the keys Secret")
    with tempfile.TemporaryDirectory() as secrets:
        made = make_certs(os.path.join(secrets, "tls"))
        os.makedirs(os.path.join(secrets, "keys"))
        for key in config["auth"]["keys"]:
            name = os.path.basename(key["secret_file"])
            with open(os.path.join(secrets, "keys", name), "w") as f:
                f.write("a-secret\n")
        text = (cm["data"]["spillway.toml"].replace(mounts["tls"], made)
                .replace(mounts["keys"], os.path.join(secrets, "keys")))
        path = os.path.join(secrets, "spillway.toml")
        with open(path, "w") as f:
            f.write(text)
        check(
            subprocess.run([os.path.join(RELEASE, "spillway"), "check-config", path]).returncode == 0,
            "spillway check-config accepts the ConfigMap's config, with the Secrets' files in place",
        )
    port = port_of(config["listen"])
    check(container["ports"][0]["containerPort"] == port, "the container port is the listen port")
    check(
        container["args"] == ["--config", "/etc/spillway/spillway.toml"], "spillway reads the ConfigMap"
    )
    check(mounts["config"] == "/etc/spillway", "the ConfigMap is mounted at /etc/spillway")
    check(mounts["data"] == config["data_dir"], "the journal volume is the data dir")
    check(
        [v["metadata"]["name"] for v in sts["spec"]["volumeClaimTemplates"]] == ["data"],
        "each replica gets its own journal volume",
    )
    check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness on /healthz")
    check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness on /readyz")
    admin_port = port_of(config["admin_listen"])
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    check(named.get("admin") == admin_port, "the admin port is the admin_listen port")
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"]:
        check(container[probe]["httpGet"]["port"] == "admin", f"the {probe} uses the plain admin port")
    check(
        pod["spec"]["terminationGracePeriodSeconds"] >= config["shutdown_timeout_seconds"] + 20,
        "the grace period outlasts spillway's shutdown timeout, with room for the last requests",
    )
    memory_cap = config.get("buffer", {}).get("max_memory_mib", 64)
    largest_buffer = max(s["buffering_hints"].get("size_in_mbs", 1) for s in config["stream"])
    check(largest_buffer * 2 <= memory_cap, "the memory cap leaves room for a full buffer and its upload")
    limit = container["resources"]["limits"]["memory"]
    check(limit.endswith("Mi") and int(limit[:-2]) >= memory_cap + 128, "the memory limit covers the memory cap")
    check(pod["metadata"]["annotations"]["prometheus.io/port"] == str(admin_port), "scrape annotation port")
    for kind, name in [("Service", "spillway"), ("Service", "spillway-headless")]:
        sel = docs[(kind, name)]["spec"]["selector"]
        check(all(labels.get(k) == v for k, v in sel.items()), f"{name} selects the pods")
    check(sts["spec"]["serviceName"] == "spillway-headless", "the StatefulSet uses the headless service")
    pdb = docs[("PodDisruptionBudget", "spillway")]["spec"]["selector"]["matchLabels"]
    check(all(labels.get(k) == v for k, v in pdb.items()), "the PDB selects the pods")
    hpa = docs[("HorizontalPodAutoscaler", "spillway")]["spec"]["scaleTargetRef"]
    check((hpa["kind"], hpa["name"]) == ("StatefulSet", "spillway"), "the HPA scales the StatefulSet")
    sm = docs[("ServiceMonitor", "spillway")]["spec"]
    svc = docs[("Service", "spillway")]
    check(
        all(svc["metadata"]["labels"].get(k) == v for k, v in sm["selector"]["matchLabels"].items()),
        "the ServiceMonitor selects the spillway service",
    )
    check(
        not all(
            docs[("Service", "spillway-headless")]["metadata"]["labels"].get(k) == v
            for k, v in sm["selector"]["matchLabels"].items()
        ),
        "the ServiceMonitor does not scrape every pod twice through the headless service",
    )
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    scraped = svc_ports.get(sm["endpoints"][0]["port"])
    check(scraped is not None and scraped["targetPort"] == "admin", "the ServiceMonitor scrapes the admin port")
    check(svc_ports["https"]["port"] == port and svc_ports["https"]["targetPort"] == "https",
          "the service's https port is the API")


# ---------------------------------------------------------------------------------------------
# 2. Live run.


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, fn, timeout=60, interval=0.5):
    deadline = time.time() + timeout
    while True:
        try:
            value = fn()
            if value:
                return value
        except OSError:
            pass
        if time.time() > deadline:
            raise SystemExit(f"FAILED: timed out waiting for {what}")
        time.sleep(interval)


def http_get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


class Prometheus:
    def __init__(self, url):
        self.url = url

    def query(self, expr):
        q = urllib.parse.urlencode({"query": expr})
        _, body = http_get(f"{self.url}/api/v1/query?{q}")
        out = json.loads(body)
        if out["status"] != "success":
            raise SystemExit(f"FAILED: query {expr!r}: {out}")
        return out["data"]["result"]

    def value(self, expr):
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


def exported_names(metrics_text):
    return {
        line.split("{")[0].split(" ")[0]
        for line in metrics_text.splitlines()
        if line and not line.startswith("#")
    }


def metric_names(expr):
    """Metric names an expression reads (spillway's and the process collector's, plus up)."""
    names = set(re.findall(r"\b(?:spillway|process)_[a-z_]+\b", expr))
    return names | ({"up"} if re.search(r"\bup\s*\{", expr) else set())


def dashboard_exprs(stream):
    dashboard = json.load(open(os.path.join(ROOT, "grafana", "spillway.json")))
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "5m").replace("$stream", stream)
            yield panel["title"], expr


def alert_rules():
    rules = load_yaml_docs(os.path.join(DEPLOY, "prometheus", "alerts.yml"))[0]
    return [r for g in rules["groups"] for r in g["rules"]]


def live(body, work, *args):
    procs = []

    def start(name, args, **kw):
        log = open(os.path.join(work, f"{name}.log"), "w")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **kw)
        procs.append((name, p))
        return p

    try:
        body(*args, work, start)
    except BaseException:
        for name in ["spillway", "prometheus", "s3s-fs", "producer", "loadgen"]:
            path = os.path.join(work, f"{name}.log")
            if os.path.exists(path):
                print(f"--- {name} log (last 30 lines)")
                print("".join(open(path).readlines()[-30:]), end="")
        raise
    finally:
        for _, p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


def start_s3(store, bucket, work, start):
    """The S3 server standing in for MinIO, with MinIO's credentials, and the bucket created over
    the S3 API as the stack's create-bucket service does: its URL and a client."""
    s3_port = free_port()
    os.makedirs(os.path.join(work, "s3"))
    start("s3s-fs", [os.environ.get("S3S_FS", "s3s-fs"), "--host", "127.0.0.1", "--port", str(s3_port),
                     "--access-key", store["access_key_id"], "--secret-key", store["secret_access_key"],
                     os.path.join(work, "s3")])
    s3_url = f"http://127.0.0.1:{s3_port}"
    wait_until("s3s-fs", lambda: socket.create_connection(("127.0.0.1", s3_port)).close() or True)
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name=store["region"],
                      aws_access_key_id=store["access_key_id"],
                      aws_secret_access_key=store["secret_access_key"])
    s3.create_bucket(Bucket=bucket)
    return s3_url, s3


def run(config, prom_config_path, work, start):
    store = config["object_store"]
    stream = config["stream"][0]
    name = stream["name"]
    bucket = stream["bucket_arn"].removeprefix("arn:aws:s3:::")
    interval = stream["buffering_hints"]["interval_in_seconds"]

    s3_url, s3 = start_s3(store, bucket, work, start)

    # spillway with the stack's config: only the endpoint, address, data dir and the path of
    # the transform (built here by its own build script, as the image build does) differ.
    text = open(os.path.join(DEPLOY, "spillway", "spillway.toml")).read()
    check(store["endpoint"] in text, "the endpoint line can be rewritten")
    image_wasm = "/usr/share/spillway/transforms/mobile-game.wasm"
    check(image_wasm in text, "the transform path can be rewritten")
    wasm = os.path.join(work, "mobile-game.wasm")
    venv_tool = os.path.join(ROOT, "target", "test-venv", "bin", "componentize-py")
    env = dict(os.environ, COMPONENTIZE_PY=venv_tool) if os.path.exists(venv_tool) else None
    built = subprocess.run(["bash", os.path.join(ROOT, "examples", "transforms", "mobile-game", "build.sh"), wasm],
                           capture_output=True, text=True, env=env)
    check(built.returncode == 0, f"the stack's transform builds: {built.stderr[-2000:]}")
    config_path = os.path.join(work, "spillway.toml")
    with open(config_path, "w") as f:
        f.write(text.replace(store["endpoint"], s3_url).replace(image_wasm, wasm))
    port = free_port()
    spillway = start("spillway", [os.path.join(RELEASE, "spillway"), "--config", config_path,
                                  "--listen", f"127.0.0.1:{port}", "--data-dir", os.path.join(work, "data")])
    base = f"http://127.0.0.1:{port}"
    wait_until("spillway ready", lambda: http_get(f"{base}/readyz")[0] == 200)

    # Prometheus with the stack's config: only the targets and the rule file's path differ.
    prom_text = open(prom_config_path).read()
    listen_port = port_of(config["listen"])
    prom_text = prom_text.replace(f"spillway:{listen_port}", f"127.0.0.1:{port}")
    prom_text = prom_text.replace("/etc/prometheus/alerts.yml", os.path.join(DEPLOY, "prometheus", "alerts.yml"))
    prom_local = os.path.join(work, "prometheus.yml")
    with open(prom_local, "w") as f:
        f.write(prom_text)
    out = subprocess.run(["promtool", "check", "config", prom_local], capture_output=True, text=True)
    check(out.returncode == 0, f"promtool check config: {out.stdout}{out.stderr}")
    prom_port = free_port()
    start("prometheus", ["prometheus", f"--config.file={prom_local}",
                         f"--storage.tsdb.path={os.path.join(work, 'tsdb')}",
                         f"--web.listen-address=127.0.0.1:{prom_port}"])
    prom = Prometheus(f"http://127.0.0.1:{prom_port}")
    wait_until("Prometheus ready", lambda: http_get(f"{prom.url}/-/ready")[0] == 200)
    wait_until("the first scrape of spillway", lambda: prom.value('up{job="spillway"}') == 1.0)

    # The stack's producer, natively, then the load generator at a steady rate.
    env = dict(os.environ, SPILLWAY_ENDPOINT=base, STREAM=name, BATCHES="4", PAUSE="0.5")
    produced = subprocess.run(["bash", os.path.join(DEPLOY, "producer", "produce.sh")],
                              env=env, capture_output=True, text=True, timeout=120)
    print(produced.stdout, end="")
    check(produced.returncode == 0, f"the producer ran: {produced.stderr}")
    producer_sent = int(re.search(r"accepted (\d+) records, 0 failed", produced.stdout).group(1))
    check(producer_sent == 4 * 50, "the producer's records were all accepted")

    # The second producer, to the stream with the Python transform, plus one record that is
    # not a player: it must reach the error prefix in the error-record envelope.
    players = config["stream"][1]["name"]
    env = dict(os.environ, SPILLWAY_ENDPOINT=base, STREAM=players, BATCHES="4", PAUSE="0.5")
    produced = subprocess.run(["bash", os.path.join(DEPLOY, "producer", "produce.sh")],
                              env=env, capture_output=True, text=True, timeout=120)
    check(produced.returncode == 0, f"the players producer ran: {produced.stderr}")
    players_sent = int(re.search(r"accepted (\d+) records, 0 failed", produced.stdout).group(1))
    fh = boto3.client("firehose", endpoint_url=base, region_name="us-east-1",
                      aws_access_key_id="local", aws_secret_access_key="local")
    bad = fh.put_record_batch(DeliveryStreamName=players, Records=[{"Data": b"not a player"}])
    check(bad["FailedPutCount"] == 0, "the bad record was accepted (it fails in the transform)")

    # An Iceberg table in the same bucket (the stack's [iceberg.catalogs.default]), created
    # and fed with boto3; each flush is one append snapshot.
    fh.create_delivery_stream(
        DeliveryStreamName="players-table",
        IcebergDestinationConfiguration={
            "RoleARN": "arn:aws:iam::000000000000:role/firehose",
            "CatalogConfiguration": {"CatalogARN": "arn:aws:glue:us-east-1:000000000000:catalog"},
            "DestinationTableConfigurationList": [
                {"DestinationDatabaseName": "game", "DestinationTableName": "players"}],
            "TableCreationConfiguration": {"Enabled": True},
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1},
            "S3Configuration": {"RoleARN": "arn:aws:iam::000000000000:role/firehose",
                                "BucketARN": f"arn:aws:s3:::{bucket}",
                                "ErrorOutputPrefix": "errors/players-table/"},
        })
    described = fh.describe_delivery_stream(DeliveryStreamName="players-table")
    table = described["DeliveryStreamDescription"]["Destinations"][0]["IcebergDestinationDescription"]
    check(table["DestinationTableConfigurationList"][0]["DestinationTableName"] == "players",
          "boto3 reads the Iceberg description")
    rows = [{"Data": json.dumps({"user_id": i, "age": 20 + i % 40, "location": "KR"}).encode()}
            for i in range(100)]
    check(fh.put_record_batch(DeliveryStreamName="players-table", Records=rows)["FailedPutCount"] == 0,
          "the Iceberg stream took its records")

    load = subprocess.run([os.path.join(RELEASE, "spillway-loadgen"), "--endpoint", base,
                           "--stream", name, "--connections", "4", "--record-size", "1024",
                           "--batch", "500", "--rate", "10", "--warmup", "0", "--duration", "12",
                           "--wait-delivered", "60", "--json"],
                          capture_output=True, text=True, timeout=180)
    check(load.returncode == 0, f"the load generator ran: {load.stderr[-2000:]}")
    result = json.loads(load.stdout)
    print(f"load generator: {result['records_accepted']} records at {result['payload_mib_per_s']:.1f} MiB/s, "
          f"p99 {result['latency_ms']['p99']:.1f} ms, delivered={result['delivered']}")
    check(result["records_failed"] == 0 and result["errors"] == 0, "no record refused under load")
    check(result["delivered"] is True, "everything was delivered")
    # Every record the load generator had accepted, its preflight request included.
    sent = producer_sent + result["delivery_target_records"]

    # The next scrapes see the final counters.
    sel = f'{{stream="{name}"}}'
    try:
        wait_until("Prometheus to see every record delivered",
                   lambda: prom.value(f"spillway_delivered_records_total{sel}") == sent, timeout=30)
    except SystemExit:
        print(f"sent {sent}; Prometheus has incoming "
              f"{prom.value(f'spillway_incoming_records_total{sel}')}, delivered "
              f"{prom.value(f'spillway_delivered_records_total{sel}')}; spillway has:")
        print("\n".join(l for l in http_get(f"{base}/metrics")[1].splitlines()
                        if l.startswith(("spillway_incoming_records", "spillway_delivered_records"))))
        raise
    check(prom.value(f"spillway_incoming_records_total{sel}") == sent, "incoming = sent")
    check(prom.value(f"spillway_delivered_records_total{sel}") == sent, "delivered = sent")
    check((prom.value(f"increase(spillway_incoming_records_total{sel}[5m])") or 0) > 0, "ingest moved")
    check((prom.value(f"increase(spillway_delivered_bytes_total{sel}[5m])") or 0) > 0, "delivery moved")
    fresh = prom.value(f"max_over_time(spillway_data_freshness_seconds{sel}[5m])")
    check(fresh is not None and fresh <= interval + 15,
          f"freshness stayed bounded by the interval ({fresh} s <= {interval} + 15 s)")
    check(prom.value(f"spillway_objects_written_total{sel}") >= 2, "objects were written")
    check(prom.value(f"spillway_upload_failures_total{sel}") == 0, "no upload failed")
    literal = stream["prefix"].split("!{")[0]
    landed = sum(1 for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=literal)
                 for _ in page.get("Contents", []))
    check(landed == prom.value(f"spillway_objects_written_total{sel}"), "objects in the bucket = objects written")

    # The players stream: every record was transformed, dropped (premium) or failed, and
    # landed under its location's prefix or the error prefix.
    psel = f'{{stream="{players}"}}'
    accounted = (f'sum(spillway_processed_records_total{psel})')
    wait_until("Prometheus to see every players record processed",
               lambda: prom.value(accounted) == players_sent + 1, timeout=60)
    check(prom.value(f'spillway_processed_records_total{{result="failed",stream="{players}"}}') == 1,
          "the bad record failed in the transform")
    check((prom.value(f'spillway_processed_records_total{{result="dropped",stream="{players}"}}') or 0) > 0,
          "premium players were dropped")
    check(prom.value(f'spillway_error_records_total{{stream="{players}",type="processing-failed"}}') == 1,
          "the bad record went to the error output")
    # Partition buffers hold the players' records until the 10 s interval; one scrape saw them.
    check((prom.value(f"max_over_time(spillway_active_partitions{psel}[10m])") or 0) >= 1,
          "players were partitioned")

    def players_landed():
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        return keys if any(k.startswith("players/location=") for k in keys) else None
    keys = wait_until("players under their location", players_landed)
    errors = [k for k in keys if k.startswith("errors/players/processing-failed/")]
    check(len(errors) == 1, "one error object for the players stream")
    envelope = json.loads(s3.get_object(Bucket=bucket, Key=errors[0])["Body"].read().splitlines()[0])
    check(envelope["rawData"] == "bm90IGEgcGxheWVy" and envelope["errorCode"] == "Lambda.ProcessingFailed",
          f"the error record carries the raw data and the code: {envelope}")

    wait_until("the Iceberg table's rows",
               lambda: prom.value('spillway_iceberg_rows_total{stream="players-table",table="game.players"}') == 100,
               timeout=60)
    check(prom.value('spillway_iceberg_commits_total{stream="players-table",table="game.players"}') >= 1,
          "the Iceberg stream committed")
    warehouse = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="warehouse/game/players/")
                 for o in page.get("Contents", [])]
    check(any(k.endswith(".parquet") for k in warehouse) and any(k.endswith(".metadata.json") for k in warehouse),
          f"the table's data and metadata files are in the bucket: {warehouse[:5]}")

    # Every name a panel or an alert reads is one spillway exports (or Prometheus's own `up`).
    _, metrics_text = http_get(f"{base}/metrics")
    exported = exported_names(metrics_text) | {"up"}
    exprs = list(dashboard_exprs(name))
    used = set()
    for _, expr in exprs:
        used |= metric_names(expr)
    # Per stream: a panel returns data for at least one of the stack's streams (transform
    # latency exists only for the stream with a transform).
    players_exprs = list(dashboard_exprs(players))
    for rule in alert_rules():
        used |= metric_names(rule["expr"])
    check(not (used - exported), f"panels and alerts read only exported metrics; unknown: {used - exported}")

    # Every dashboard expression returns data.
    for (title, expr), (_, players_expr) in zip(exprs, players_exprs):
        values = [float(r["value"][1]) for r in prom.query(expr) + prom.query(players_expr)]
        check(any(v == v for v in values), f"panel {title!r} returns a number (not only NaN): {expr} -> {values}")
    print(f"dashboard: {len(exprs)} expressions returned data")

    # The alert rules are loaded and evaluate without error (none needs to fire).
    def evaluated():
        _, body = http_get(f"{prom.url}/api/v1/rules")
        rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2") and
                                      not r["lastEvaluation"].startswith("0001") for r in rules) else None
    rules = wait_until("the alert rules to be evaluated", evaluated, timeout=30)
    check(len(rules) == len(alert_rules()), "every alert rule is loaded")
    # The players stream was sent one bad record on purpose: its error-output alert is pending
    # (it fires only after 30 min of errors); every other rule stays quiet.
    expect_pending = {"SpillwayRecordsToErrorOutput"}
    for r in rules:
        check(r["health"] == "ok", f"rule {r['name']} evaluates: {r.get('lastError')}")
        if r["name"] in expect_pending:
            check(r["state"] == "pending", f"rule {r['name']} saw the bad record (pending, not firing)")
        else:
            check(r["state"] == "inactive", f"rule {r['name']} does not fire on a healthy stack")
    # Each alert reads series that exist now (a typo'd name would never fire).
    for rule in alert_rules():
        for metric in metric_names(rule["expr"]):
            check(prom.query(metric), f"alert {rule['alert']} reads {metric}, which has series")

    # SIGTERM drains and exits 0, as Kubernetes and compose stop it.
    spillway.terminate()
    check(spillway.wait(timeout=60) == 0, "spillway exits 0 on SIGTERM")


def run_secure(config, wasm, work, start):
    """docker-compose.secure.yml's spillway, natively: HTTPS and signed requests on the API,
    probes and metrics on the plain admin address."""
    store = config["object_store"]
    bucket = config["stream"][0]["bucket_arn"].removeprefix("arn:aws:s3:::")
    secrets = make_certs(os.path.join(work, "secrets"))
    s3_url, s3 = start_s3(store, bucket, work, start)

    # The compose secrets' paths become the files make-certs.sh wrote.
    text = open(os.path.join(DEPLOY, "spillway", "spillway-secure.toml")).read()
    compose_files = load_yaml_docs(os.path.join(DEPLOY, "docker-compose.secure.yml"))[0]["secrets"]
    for name, spec in compose_files.items():
        text = text.replace(f"/run/secrets/{name}\"", os.path.join(secrets, os.path.basename(spec["file"])) + '"')
    text = text.replace(store["endpoint"], s3_url).replace("/usr/share/spillway/transforms/mobile-game.wasm", wasm)
    check("/run/secrets/" not in text, "every secret the secure config reads is a compose secret")
    config_path = os.path.join(work, "spillway.toml")
    with open(config_path, "w") as f:
        f.write(text)
    check(subprocess.run([os.path.join(RELEASE, "spillway"), "check-config", config_path]).returncode == 0,
          "spillway check-config accepts the secure config with make-certs.sh's files")
    port, admin_port = free_port(), free_port()
    spillway = start("spillway", [os.path.join(RELEASE, "spillway"), "--config", config_path,
                                  "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}",
                                  "--data-dir", os.path.join(work, "data")])
    admin = f"http://127.0.0.1:{admin_port}"
    wait_until("secure spillway ready", lambda: http_get(f"{admin}/readyz")[0] == 200)
    probe = subprocess.run([os.path.join(RELEASE, "spillway"), "probe", f"{admin}/readyz"])
    check(probe.returncode == 0, "the compose health check's probe passes")

    # The producer as the override configures it: HTTPS with the CA, the producer key's secret
    # from its file.
    endpoint = f"https://localhost:{port}"
    stream = config["stream"][0]["name"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(SPILLWAY_ENDPOINT=endpoint, STREAM=stream, BATCHES="2", PAUSE="0.2",
               AWS_CA_BUNDLE=os.path.join(secrets, "ca.crt"), AWS_ACCESS_KEY_ID="AKIDPRODUCER",
               AWS_SECRET_ACCESS_KEY_FILE=os.path.join(secrets, "producer.secret"),
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    produced = subprocess.run(["bash", os.path.join(DEPLOY, "producer", "produce.sh")],
                              env=env, capture_output=True, text=True, timeout=120)
    check(produced.returncode == 0 and "accepted 100 records, 0 failed" in produced.stdout,
          f"the producer sent over HTTPS, signed: {produced.stdout[-500:]} {produced.stderr[-2000:]}")

    def firehose(key, secret, verify):
        return boto3.client("firehose", endpoint_url=endpoint, region_name="us-east-1",
                            aws_access_key_id=key, aws_secret_access_key=secret, verify=verify,
                            config=botocore.config.Config(retries={"max_attempts": 1}))
    ca = os.path.join(secrets, "ca.crt")
    operator = open(os.path.join(secrets, "operator.secret")).read().strip()
    listed = firehose("AKIDOPERATOR", operator, ca).list_delivery_streams()["DeliveryStreamNames"]
    check(stream in listed, "the operator key lists the streams")
    for key, secret, verify, expected in [
        ("AKIDOPERATOR", "wrong", ca, "InvalidSignatureException"),
        ("AKIDPRODUCER", open(os.path.join(secrets, "producer.secret")).read().strip(), ca, "AccessDeniedException"),
    ]:
        try:
            firehose(key, secret, verify).delete_delivery_stream(DeliveryStreamName=stream)
            check(False, f"{expected} expected")
        except botocore.exceptions.ClientError as e:
            check(e.response["Error"]["Code"] == expected, f"{expected}: {e}")
    try:
        firehose("AKIDOPERATOR", operator, True).list_delivery_streams()
        check(False, "a client without the CA must not connect")
    except botocore.exceptions.SSLError:
        pass
    _, metrics = http_get(f"{admin}/metrics")
    check(f'spillway_incoming_records_total{{stream="{stream}"}} 100' in metrics,
          "the admin address serves the metrics")

    spillway.terminate()
    check(spillway.wait(timeout=60) == 0, "secure spillway exits 0 on SIGTERM")
    literal = config["stream"][0]["prefix"].split("!{")[0]
    records = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=literal):
        for o in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            records += len(gzip.decompress(body).splitlines())
    check(records == 100, f"the producer's 100 records landed ({records})")
    print("secure stack: HTTPS, signed producer, admin address: ok")


def main():
    global checks
    for tool in ["prometheus", "promtool", "kubernetes-validate", "aws"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found; tests/run.sh installs it")
    out = subprocess.run(["promtool", "check", "rules", os.path.join(DEPLOY, "prometheus", "alerts.yml")],
                         capture_output=True, text=True)
    print(out.stdout, end="")
    check(out.returncode == 0, f"promtool check rules: {out.stderr}")
    config, prom_config_path = compose_checks()
    kubernetes_checks()
    print(f"static checks: {checks} passed")
    work = tempfile.mkdtemp(prefix="spillway-stack-")
    try:
        live(run, work, config, prom_config_path)
        secure = os.path.join(work, "secure")
        os.makedirs(secure)
        live(run_secure, secure, config, os.path.join(work, "mobile-game.wasm"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"stack checks: {checks} passed")


if __name__ == "__main__":
    main()
