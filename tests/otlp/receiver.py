#!/usr/bin/env python3
"""A local OTLP/HTTP trace receiver for the tests: decodes each export request with the official
OpenTelemetry protobuf definitions (the opentelemetry-proto package) and appends one JSON line per
span to the output file (with its scope, flags and the request's x-secflow-test header). Prints the port it listens on, then serves until killed.

    python3 tests/otlp/receiver.py OUT.jsonl [--fail]    # --fail answers 503 to every export
"""
import http.server
import json
import sys

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def spans(request, header):
    for rs in request.resource_spans:
        resource = {a.key: value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "start": s.start_time_unix_nano,
                    "end": s.end_time_unix_nano,
                    "status": s.status.code,
                    "status_message": s.status.message,
                    "attributes": {a.key: value(a.value) for a in s.attributes},
                    "resource": resource,
                    "scope": ss.scope.name,
                    "flags": getattr(s, "flags", None),
                    "header": header,
                }


class Handler(http.server.BaseHTTPRequestHandler):
    fail = False
    out = None

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        if Handler.fail:
            self.send_response(503)
            self.end_headers()
            return
        request = trace_service_pb2.ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as e:
            self.send_response(400)
            self.end_headers()
            self.wfile.write(str(e).encode())
            return
        with open(Handler.out, "a", encoding="utf-8") as f:
            for span in spans(request, self.headers.get("x-secflow-test")):
                f.write(json.dumps(span) + "\n")
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def main():
    Handler.out = sys.argv[1]
    Handler.fail = "--fail" in sys.argv[2:]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
