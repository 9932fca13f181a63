"""Helm for tests/chart.rs, through the helm-python-sdk package (Helm v4 as a library).

Reads one JSON request per line on stdin and answers one JSON line on stdout, so one process
serves a whole test:

    {"op": "lint", "chart": DIR, "values": {...}}
    {"op": "render", "chart": DIR, "values": {...}, "name": NAME, "namespace": NS}
    {"op": "install" | "upgrade", "kubeconfig": FILE, "chart": DIR, "values": {...},
     "name": NAME, "namespace": NS}
    {"op": "uninstall", "kubeconfig": FILE, "name": NAME, "namespace": NS}

Answers are {"ok": RESULT} or {"error": MESSAGE, "type": EXCEPTION CLASS}. Exit status 3 at
start when the package is missing (the test then says it was skipped and why).
"""

import json
import sys

try:
    import helm_python as helm
except ImportError as missing:
    print(f"helm-python-sdk is not installed ({missing})", file=sys.stderr)
    sys.exit(3)


def lint(request):
    return helm.lint(request["chart"], request.get("values"), strict=True,
                     namespace=request.get("namespace"))


def render(request):
    with helm.Chart.load(request["chart"]) as chart:
        # The schema is checked as `helm install` checks it.
        chart.validate_schema(chart.merge_values(request.get("values")))
        return chart.render(request.get("values"), name=request["name"],
                            namespace=request["namespace"], is_install=True)


def config(request):
    return helm.Config(kubeconfig_path=request["kubeconfig"], namespace=request["namespace"])


def install(request):
    with config(request) as cfg:
        release = cfg.install(request["chart"], request["name"], request.get("values"),
                              namespace=request["namespace"], create_namespace=True,
                              timeout=120)
    return {"manifest": release.get("manifest", ""), "version": release.get("version")}


def upgrade(request):
    with config(request) as cfg:
        release = cfg.upgrade(request["chart"], request["name"], request.get("values"),
                              namespace=request["namespace"], timeout=120)
    return {"manifest": release.get("manifest", ""), "version": release.get("version")}


def uninstall(request):
    with config(request) as cfg:
        return cfg.uninstall(request["name"], timeout=120)


OPS = {"lint": lint, "render": render, "install": install, "upgrade": upgrade,
       "uninstall": uninstall,
       "version": lambda _: {"sdk": helm.helm_sdk_version(), "package": helm.__version__}}


def main():
    # Answers only on stdout; the engine's own log lines would only repeat the errors.
    helm.disable_logging()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"ok": OPS[request["op"]](request)}
        except helm.HelmError as error:
            answer = {"error": str(error), "type": type(error).__name__}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
