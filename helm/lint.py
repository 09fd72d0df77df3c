#!/usr/bin/env python3
"""Lint the raftlite Helm chart with the real Helm library (the `helm-sdkpy` package).

Helm's lint renders every template and checks the result, Chart.yaml and values.schema.json.
It runs on the default values and on variants that switch on the optional parts (archive and
its Secret, ServiceMonitor, hard anti-affinity, no hook, 5 replicas),
each linted as a copy of the chart whose values.yaml has the overrides merged in.

    python3 helm/lint.py        # exit 0: clean; 1: lint found problems; 2: helm-sdkpy missing

Install the library with `pip install --ignore-requires-python helm-sdkpy` (.ci/run does).
"""

import asyncio
import copy
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent / "raftlite"
SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}

VARIANTS = {
    "defaults": {},
    "archive+secret": {
        "archive": {
            "url": "s3://bucket/raftlite",
            "endpoint": "http://minio:9000",
            "region": "us-east-1",
            "credentials": {"existingSecret": "raftlite-s3"},
        }
    },
    "servicemonitor+hard-affinity": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "antiAffinity": "hard",
        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
    },
    "five-no-hook-no-pdb": {
        "replicas": 5,
        "scaleDownHook": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "antiAffinity": "none",
        "persistence": {"storageClassName": "fast"},
    },
}


def merge(base, overrides):
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def schema_problems(values):
    """Readable schema errors (helm-sdkpy reports that lint failed, not why)."""
    try:
        import json

        import jsonschema
    except ImportError:
        return []
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"values{''.join(f'[{p!r}]' for p in e.path)}: {e.message}" for e in validator.iter_errors(values)]


async def lint(helm, path):
    config = helm.Configuration(namespace="default")
    return await helm.Lint(config).run(str(path))


def main():
    try:
        import helm_sdkpy as helm
    except ImportError:
        print(
            "error: the Python package helm-sdkpy (the Helm library) is not installed;\n"
            "       install it with: python3 -m pip install --ignore-requires-python helm-sdkpy",
            file=sys.stderr,
        )
        return 2
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    failed = False
    for name, overrides in VARIANTS.items():
        values = merge(defaults, overrides)
        with tempfile.TemporaryDirectory() as tmp:
            chart = Path(tmp) / "raftlite"
            shutil.copytree(CHART, chart)
            if overrides:
                (chart / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
            result = asyncio.run(lint(helm, chart))
        problems = [
            m for m in result.get("Messages") or [] if m.get("Severity", 0) >= 2
        ]
        if result.get("TotalChartsLinted") != 1:
            problems.append({"Severity": 3, "Path": ".", "Err": "the chart was not linted"})
        if problems or result.get("Errors"):
            failed = True
            print(f"FAIL {name}:")
            for m in problems:
                err = m.get("Err") or "(helm-sdkpy gives no message text; run `helm lint` for it)"
                print(f"  {SEVERITY.get(m.get('Severity'), '?')} {m.get('Path')}: {err}")
            for problem in schema_problems(values):
                print(f"  schema: {problem}")
        else:
            print(f"ok   {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
