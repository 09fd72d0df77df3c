"""Render the raftlite chart with the real Helm library (helm-sdkpy), without a cluster.

helm-sdkpy has no `helm template` and no client-side dry run (its Install and Upgrade talk to
a cluster). Its Lint action does render every template, in Helm's lint mode, where `fail` does
not stop the rendering: Helm logs the message instead (`INFO funcMap fail message="..."` on
the process's stderr). render() uses that: it lints a copy of the chart with an extra template
that `include`s every template file and `fail`s with the output, base64-encoded, behind a
marker, captures file descriptor 2 while the Go library runs, and decodes the log lines.

What lint mode gives: release name `test-release`, an empty namespace, `lookup` finding nothing
(so what a first install renders). Other `fail` messages (the chart's own checks) are returned
in Rendered.fails: in lint mode they do not make the lint fail by themselves.

Used by helm/lint.py (checks on the rendered objects) and helm/check_compose.py.
"""

import asyncio
import base64
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent / "raftlite"
MARKER = "RAFTLITE-RENDER"
DUMP_TEMPLATE = "zz-raftlite-render-dump.yaml"
FAIL_LINE = re.compile(r'funcMap fail message="((?:[^"\\]|\\.)*)"')


def import_helm():
    try:
        import helm_sdkpy
    except ImportError:
        print(
            "error: the Python package helm-sdkpy (the Helm library) is not installed;\n"
            "       install it with: python3 -m pip install --ignore-requires-python helm-sdkpy",
            file=sys.stderr,
        )
        sys.exit(2)
    return helm_sdkpy


@dataclass
class Rendered:
    lint: dict  # helm-sdkpy's lint result (Messages, TotalChartsLinted, Errors)
    files: dict = field(default_factory=dict)  # template file name -> rendered text
    probes: dict = field(default_factory=dict)  # extra probe name -> decoded JSON
    fails: list = field(default_factory=list)  # other `fail`/`required` messages

    def objects(self):
        """Every rendered Kubernetes object (NOTES.txt excluded)."""
        out = []
        for name, text in sorted(self.files.items()):
            if name.endswith(".txt"):
                continue
            out.extend(d for d in yaml.safe_load_all(text) if d)
        return out

    def find(self, kind, name=None):
        return [o for o in self.objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]

    def one(self, kind, name=None):
        found = self.find(kind, name)
        if len(found) != 1:
            raise AssertionError(f"expected one {kind} {name or ''}, rendered {len(found)}")
        return found[0]


def merge(base, overrides):
    import copy

    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def default_values():
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _dump_template(files, probes):
    lines = [f"{{{{- /* Added by helm/render.py to a copy of the chart: {MARKER} */}}}}"]
    for name in files:
        lines.append(
            f'{{{{- fail (printf "{MARKER} file:%s %s" {json.dumps(name)} '
            f'(include (print $.Template.BasePath "/" {json.dumps(name)}) $ | b64enc)) }}}}'
        )
    for name, expr in probes.items():
        # expr: a template block that leaves the value to dump in $out.
        lines.append(f"{{{{- with $ }}}}{expr}")
        lines.append(f'{{{{- fail (printf "{MARKER} probe:%s %s" {json.dumps(name)} ($out | toJson | b64enc)) }}}}')
        lines.append("{{- end }}")
    return "\n".join(lines) + "\n"


def _capture_fd2(fn):
    """Run fn() with file descriptor 2 redirected to a temporary file; return (result, text)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            result = fn()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return result, tmp.read().decode("utf-8", "replace")


def render(values, probes=None, namespace="default"):
    """Lint and render the chart with `values` (the complete values.yaml to use).

    probes: name -> template text that sets `$out` (anything toJson can encode), evaluated with
    the chart's helpers available, e.g. to call a helper with made-up `lookup` results.
    """
    helm = import_helm()
    probes = probes or {}
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "raftlite"
        shutil.copytree(CHART, chart)
        (chart / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
        names = sorted(
            p.name for p in (chart / "templates").iterdir() if p.is_file() and not p.name.startswith("_")
        )
        (chart / "templates" / DUMP_TEMPLATE).write_text(_dump_template(names, probes))

        async def lint():
            config = helm.Configuration(namespace=namespace)
            return await helm.Lint(config).run(str(chart))

        result, log = _capture_fd2(lambda: asyncio.run(lint()))
    rendered = Rendered(lint=result)
    for m in FAIL_LINE.finditer(log):
        message = m.group(1)
        if message.startswith(MARKER + " "):
            _, key, payload = message.split(" ", 2)
            kind, name = key.split(":", 1)
            text = base64.b64decode(payload).decode()
            if kind == "file":
                rendered.files[name] = text
            else:
                rendered.probes[name] = json.loads(text)
        else:
            message = message.encode().decode("unicode_escape")
            if message not in rendered.fails:  # the dump template renders every file again
                rendered.fails.append(message)
    missing = [n for n in names if n not in rendered.files]
    if missing:
        rendered.fails.append(f"render.py: no output captured for {missing} (did the template fail?)")
    return rendered
