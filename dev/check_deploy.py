#!/usr/bin/env python3
"""dev/check_deploy.py OUT: checks on the Helm chart's rendered manifests in OUT (dev/check-deploy).

- default.yaml's projector.toml equals config/projector.toml except the partition count and
  the connections (which the chart points at the fleet's services): the chart's defaults do
  not drift from the binary's;
- every projector.toml rendered (default and non-default values) is valid TOML with the
  sections the binary needs;
- the Deployment: each pod's --instance is its pod name, the grace period outlasts
  --shutdown-timeout, probes on /healthz and /readyz, non-root with a read-only root;
- the hook Job runs `projector streams ensure` before install and upgrade;
- a rendered PrometheusRule carries exactly deploy/prometheus/projector.rules.yml;
- only these kinds are rendered (kubernetes-validate cannot check the CRD ones);
- the Grafana dashboard parses and every panel has a query;
- the projector binary ($PROJECTOR_BIN) loads every rendered projector.toml (`bench gen`
  parses and validates the config without connecting anywhere).
"""
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
KINDS = {"ConfigMap", "Deployment", "Job", "Service", "PodDisruptionBudget",
         "ServiceMonitor", "PrometheusRule"}


def fail(msg):
    print(f"check_deploy: error: {msg}", file=sys.stderr)
    sys.exit(1)


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def check_release(name, objs, rules):
    by_kind = {}
    for o in objs:
        if o["kind"] not in KINDS:
            fail(f"{name}: unexpected kind {o['kind']}")
        by_kind.setdefault(o["kind"], []).append(o)
    configs = {}
    for cm in by_kind["ConfigMap"]:
        text = cm["data"]["projector.toml"]
        try:
            cfg = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            fail(f"{name}: {cm['metadata']['name']} projector.toml is not TOML: {e}\n{text}")
        for section in ("nats", "neo4j", "valkey", "stream_defaults", "streams",
                        "dead_letters", "partitions", "projectors"):
            if section not in cfg:
                fail(f"{name}: projector.toml has no [{section}]")
        configs[cm["metadata"]["name"]] = cfg
        path = Path(sys.argv[1]) / f"{name}-{cm['metadata']['name']}.toml"
        path.write_text(text)
        run = subprocess.run([os.environ["PROJECTOR_BIN"], "--config", str(path), "bench", "gen",
                              "--stories", "1"], capture_output=True, text=True)
        if run.returncode != 0:
            fail(f"{name}: projector refuses {cm['metadata']['name']}'s projector.toml: {run.stderr.strip()}")
    if len({json.dumps(c, sort_keys=True) for c in configs.values()}) != 1:
        fail(f"{name}: the hook's projector.toml differs from the Deployment's")
    (dep,) = by_kind["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    if env["PROJECTOR_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"] != "metadata.name":
        fail(f"{name}: PROJECTOR_INSTANCE is not the pod name")
    args = dict(a.split("=", 1) for a in c["args"] if a.startswith("--") and "=" in a)
    if pod["terminationGracePeriodSeconds"] <= int(args["--shutdown-timeout"]):
        fail(f"{name}: terminationGracePeriodSeconds does not outlast --shutdown-timeout")
    if c["livenessProbe"]["httpGet"]["path"] != "/healthz" or c["readinessProbe"]["httpGet"]["path"] != "/readyz":
        fail(f"{name}: probes are not /healthz (liveness) and /readyz (readiness)")
    sc = c["securityContext"]
    if not (pod["securityContext"]["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
            and not sc["allowPrivilegeEscalation"]):
        fail(f"{name}: not non-root with a read-only root filesystem")
    if "limits" not in c["resources"] or "requests" not in c["resources"]:
        fail(f"{name}: no resource requests/limits")
    (job,) = by_kind["Job"]
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    if sorted(hooks) != ["pre-install", "pre-upgrade"]:
        fail(f"{name}: the streams Job is not a pre-install/pre-upgrade hook: {hooks}")
    if job["spec"]["template"]["spec"]["containers"][0]["args"][:2] != ["streams", "ensure"]:
        fail(f"{name}: the hook Job does not run `projector streams ensure`")
    for pr in by_kind.get("PrometheusRule", []):
        if pr["spec"] != rules:
            fail(f"{name}: the PrometheusRule differs from deploy/prometheus/projector.rules.yml")
    print(f"check_deploy: {name}: {len(objs)} objects, {', '.join(sorted(by_kind))}")
    return configs


def main():
    out = Path(sys.argv[1])
    rules = yaml.safe_load((ROOT / "deploy/prometheus/projector.rules.yml").read_text())
    for f in sorted(out.glob("*.yaml")):
        configs = check_release(f.stem, docs(f), rules)
        if f.stem == "default":
            rendered = next(iter(configs.values()))
            builtin = tomllib.loads((ROOT / "config/projector.toml").read_text())
            for cfg in (rendered, builtin):
                cfg["partitions"].pop("count")
                for section, key in (("nats", "url"), ("neo4j", "uri"), ("valkey", "url")):
                    cfg[section].pop(key)
                cfg["nats"].setdefault("tls_required", False)
            if rendered != builtin:
                fail("the chart's default projector.toml differs from config/projector.toml:\n"
                     f"chart:    {json.dumps(rendered, sort_keys=True)}\n"
                     f"built-in: {json.dumps(builtin, sort_keys=True)}")
    dash = json.loads((ROOT / "deploy/grafana/projector.json").read_text())
    for p in dash["panels"]:
        if not p.get("targets") or not all(t.get("expr") for t in p["targets"]):
            fail(f"dashboard panel {p['title']!r} has no query")
    # Every query as a recording rule, for `promtool check rules` to parse (Grafana's
    # variables replaced by what they expand to).
    rules = []
    for p in dash["panels"]:
        for t in p["targets"]:
            expr = t["expr"].replace("$__rate_interval", "5m").replace("$job", ".*")
            rules.append({"record": f"dashboard:panel{p['id']}:{t['refId']}", "expr": expr})
    (out / "dashboard-queries.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    print(f"check_deploy: dashboard: {len(dash['panels'])} panels, {len(rules)} queries")


main()
