"""A small in-process Kubeflow Pipelines API server: the v2beta1 endpoints `kfp.Client` calls, nothing more.

It keeps experiments, pipelines, pipeline versions, runs and recurring runs in memory, answers with the JSON
shapes of the KFP v2beta1 REST API (kfp_server_api deserializes them into its models) and records every
request, so a test can assert what the real client sent: the uploaded spec, the run's parameters, the
experiment, the recurring run's trigger. Unknown paths answer 404 with a KFP-style error body.

    with FakeKFP() as kfp_server:
        client = kfp.Client(host=kfp_server.url)
        ...
        kfp_server.requests_to("POST", "/apis/v2beta1/runs")
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

API = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any = None                                      # parsed JSON body, if any
    files: dict[str, bytes] = field(default_factory=dict)  # multipart uploads: form field name -> content


class FakeKFP:
    """The server (a thread on 127.0.0.1, a free port) and its state."""

    def __init__(self, multi_user: bool = False) -> None:
        self.multi_user = multi_user
        self.requests: list[Request] = []
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}  # pipeline id -> versions, oldest first
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeKFP:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def requests_to(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def _new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    # ---- the API ----

    def handle(self, req: Request) -> tuple[int, dict]:
        m, p = req.method, req.path
        if m == "GET" and p == f"{API}/healthz":
            return 200, {"multi_user": self.multi_user}
        if p == f"{API}/experiments":
            if m == "GET":
                found = [e for e in self.experiments.values() if _matches(e, req.query.get("filter"))]
                return 200, ({"experiments": found, "total_size": len(found)} if found else {})
            if m == "POST":
                exp = {**req.body, "experiment_id": self._new_id("experiment"), "storage_state": "AVAILABLE"}
                if any(e["display_name"] == exp.get("display_name") for e in self.experiments.values()):
                    return 409, _error(f"experiment {exp.get('display_name')!r} already exists")
                self.experiments[exp["experiment_id"]] = exp
                return 200, exp
        if m == "GET" and (match := re.fullmatch(f"{API}/experiments/([^/]+)", p)):
            exp = self.experiments.get(match[1])
            return (200, exp) if exp else (404, _error(f"experiment {match[1]} not found"))
        if m == "GET" and p == f"{API}/pipelines":
            found = [x for x in self.pipelines.values() if _matches(x, req.query.get("filter"))]
            return 200, ({"pipelines": found, "total_size": len(found)} if found else {})
        if m == "POST" and p == f"{API}/pipelines/upload":
            name = req.query.get("name") or req.query.get("display_name")
            if not name or "uploadfile" not in req.files:
                return 400, _error("upload needs a name and an uploadfile")
            if any(x["display_name"] == name for x in self.pipelines.values()):
                return 409, _error(f"pipeline {name!r} already exists")
            pid = self._new_id("pipeline")
            pipeline = {"pipeline_id": pid, "display_name": name, "name": name,
                        "description": req.query.get("description", "")}
            self.pipelines[pid] = pipeline
            self.versions[pid] = []
            self._add_version(pid, name, req.files["uploadfile"])  # as KFP: the upload is also the first version
            return 200, pipeline
        if m == "POST" and p == f"{API}/pipelines/upload_version":
            pid = req.query.get("pipelineid", "")
            if pid not in self.pipelines:
                return 404, _error(f"pipeline {pid!r} not found")
            name = req.query.get("name") or req.query.get("display_name")
            if not name or "uploadfile" not in req.files:
                return 400, _error("upload_version needs a name and an uploadfile")
            if any(v["display_name"] == name for v in self.versions[pid]):
                return 409, _error(f"version {name!r} already exists")
            return 200, self._add_version(pid, name, req.files["uploadfile"])
        if m == "GET" and (match := re.fullmatch(f"{API}/pipelines/([^/]+)/versions", p)):
            if match[1] not in self.pipelines:
                return 404, _error(f"pipeline {match[1]!r} not found")
            found = self.versions[match[1]]
            return 200, ({"pipeline_versions": found, "total_size": len(found)} if found else {})
        if m == "POST" and p == f"{API}/runs":
            error = self._check_experiment(req.body)
            if error:
                return 400, error
            run = {**req.body, "run_id": self._new_id("run"), "state": "PENDING"}
            self.runs[run["run_id"]] = run
            return 200, run
        if m == "POST" and p == f"{API}/recurringruns":
            body = req.body
            error = self._check_experiment(body)
            ref = body.get("pipeline_version_reference") or {}
            if not error and not body.get("pipeline_spec"):
                if ref.get("pipeline_id") not in self.pipelines:
                    error = _error(f"pipeline {ref.get('pipeline_id')!r} not found")
                elif ref.get("pipeline_version_id") and ref["pipeline_version_id"] not in {
                        v["pipeline_version_id"] for v in self.versions[ref["pipeline_id"]]}:
                    error = _error(f"pipeline version {ref['pipeline_version_id']!r} not found")
            if not error and not (body.get("trigger") or {}).get("cron_schedule", {}).get("cron") and not (
                    body.get("trigger") or {}).get("periodic_schedule"):
                error = _error("a recurring run needs a trigger")
            if error:
                return 400, error
            job = {**body, "recurring_run_id": self._new_id("recurring-run"), "status": "ENABLED"}
            self.recurring_runs[job["recurring_run_id"]] = job
            return 200, job
        return 404, _error(f"no route for {m} {p}")

    def _add_version(self, pid: str, name: str, spec: bytes) -> dict:
        docs = list(yaml.safe_load_all(spec.decode("utf-8")))
        version = {"pipeline_id": pid, "pipeline_version_id": self._new_id("version"), "display_name": name,
                   "name": name, "pipeline_spec": docs[0]}
        self.versions[pid].append(version)
        return version

    def _check_experiment(self, body: dict) -> dict | None:
        if body.get("experiment_id") not in self.experiments:
            return _error(f"experiment {body.get('experiment_id')!r} not found")
        return None

    # ---- HTTP plumbing ----

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                req = Request(self.command, url.path, query)
                ctype = self.headers.get("Content-Type", "")
                if ctype.startswith("multipart/form-data"):
                    req.files = _multipart(ctype, raw)
                elif raw:
                    req.body = json.loads(raw)
                with fake._lock:
                    fake.requests.append(req)
                    status, payload = fake.handle(req)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def _error(message: str) -> dict:
    return {"error_message": message, "error_details": message}


def _matches(item: dict, filter_json: str | None) -> bool:
    """The EQUALS predicates of a KFP filter (all the client's name look-ups use)."""
    if not filter_json:
        return True
    for pred in json.loads(filter_json).get("predicates", []):
        if pred.get("operation") not in ("EQUALS", 1):
            raise ValueError(f"fake KFP: unsupported filter operation {pred.get('operation')!r}")
        if item.get(pred["key"]) != pred.get("stringValue", pred.get("string_value")):
            return False
    return True


def _multipart(content_type: str, raw: bytes) -> dict[str, bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    files = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            files[name] = part.get_payload(decode=True)
    return files
