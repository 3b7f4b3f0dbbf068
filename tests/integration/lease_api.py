"""A minimal Kubernetes API serving Lease objects (coordination.k8s.io/v1), for tests only.
It also answers TokenReviews (authentication.k8s.io/v1) for the tokens put in ``tokens``.

No kube-apiserver is installable here, so this implements the part of the API the leader
election uses: GET, POST and PUT of namespaced Leases, with resourceVersion optimistic
concurrency (a stale PUT is 409 Conflict). ``fail_writes_from`` makes renewals of one
holder fail with 500, to test a leader that cannot renew.

TokenReviews follow the API server's audience rules: a review without ``spec.audiences`` asks for the API
server's own (:data:`API_AUDIENCE`); a token listed in ``audiences`` is valid only for those (as a token from
``kubectl create token --audience``), one that is not for any audience asked; ``status.audiences`` is the
intersection. ``review_delay`` makes every review answer that many seconds late (an API server that hangs).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/?]+))?")
_TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
_POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/?]+)")
#: The audience of tokens made for the API server itself (a pod's default ServiceAccount token).
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"


class LeaseAPI:
    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict] = {}
        self.version = 0
        self.fail_writes_from: set[str] = set()
        #: token -> (username, groups) the TokenReview API authenticates; every review is counted.
        self.tokens: dict[str, tuple[str, list[str]]] = {}
        self.reviews = 0
        #: token -> the audiences it was made for (absent: valid for whatever audience a review asks).
        self.audiences: dict[str, list[str]] = {}
        self.review_delay = 0.0
        #: (namespace, pod) -> labels, written by PATCH (a JSON merge patch of metadata.labels; null removes).
        self.pod_labels: dict[tuple[str, str], dict[str, str]] = {}
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str) -> None:
                self._reply(
                    code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}
                )

            def _body(self) -> dict:
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

            def do_GET(self):
                match = _PATH.match(self.path)
                with api.lock:
                    lease = api.leases.get((match.group(1), match.group(2))) if match else None
                self._reply(200, lease) if lease else self._status(404, "NotFound")

            def do_POST(self):
                if self.path.split("?")[0] == _TOKEN_REVIEWS:
                    body = self._body()
                    time.sleep(api.review_delay)
                    return self._reply(201, api._review(body))
                match = _PATH.match(self.path)
                body = self._body()
                with api.lock:
                    key = (match.group(1), body["metadata"]["name"])
                    if key in api.leases:
                        return self._status(409, "AlreadyExists")
                    api.leases[key] = api._stamp(body, match.group(1))
                    self._reply(201, api.leases[key])

            def do_PATCH(self):
                match = _POD.match(self.path)
                if not match:
                    return self._status(404, "NotFound")
                patch = self._body().get("metadata", {}).get("labels") or {}
                with api.lock:
                    labels = api.pod_labels.setdefault((match.group(1), match.group(2)), {})
                    for key, value in patch.items():
                        if value is None:
                            labels.pop(key, None)
                        else:
                            labels[key] = value
                    labels = dict(labels)
                metadata = {"name": match.group(2), "namespace": match.group(1), "labels": labels}
                self._reply(200, {"apiVersion": "v1", "kind": "Pod", "metadata": metadata})

            def do_PUT(self):
                match = _PATH.match(self.path)
                body = self._body()
                with api.lock:
                    key = (match.group(1), match.group(2))
                    current = api.leases.get(key)
                    if current is None:
                        return self._status(404, "NotFound")
                    if body.get("spec", {}).get("holderIdentity") in api.fail_writes_from:
                        return self._status(500, "InternalError")
                    if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                        return self._status(409, "Conflict")
                    api.leases[key] = api._stamp(body, match.group(1))
                    self._reply(200, api.leases[key])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _stamp(self, body: dict, namespace: str) -> dict:
        self.version += 1
        body = {**body, "apiVersion": "coordination.k8s.io/v1", "kind": "Lease"}
        body["metadata"] = {**body["metadata"], "namespace": namespace, "resourceVersion": str(self.version)}
        return body

    def _review(self, body: dict) -> dict:
        spec = body.get("spec", {})
        token = spec.get("token", "")
        asked = spec.get("audiences") or [API_AUDIENCE]
        with self.lock:
            self.reviews += 1
            user = self.tokens.get(token)
            made_for = self.audiences.get(token)
        valid = asked if made_for is None else [a for a in asked if a in made_for]
        status = (
            {"authenticated": True, "user": {"username": user[0], "groups": user[1]}, "audiences": valid}
            if user and valid
            else {"authenticated": False, "error": "invalid bearer token"}
        )
        return {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": spec,
            "status": status,
        }

    def labelled(self, namespace: str, label: str) -> list[str]:
        """The pods carrying ``label``."""
        with self.lock:
            return sorted(pod for (ns, pod), labels in self.pod_labels.items() if ns == namespace and label in labels)

    def holder(self, namespace: str, name: str) -> str | None:
        with self.lock:
            lease = self.leases.get((namespace, name))
        return lease["spec"].get("holderIdentity") if lease else None

    def close(self) -> None:
        self.server.shutdown()
