"""The OpenAPI 3.1 description served at /openapi.json."""

from __future__ import annotations

from typing import Any

from mailowl import __version__

_MESSAGE = {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}
_RESULT = {"type": "string", "enum": ["unchecked", "unknown", "ignored", "good", "failed", "bad"]}
_UPLOAD = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary",
                                "description": "the sample; filename and Content-Type of the part are used"}},
    }}},
}
# the one job-id syntax of mailowl.api.ids: 1 to 19 ASCII digits, no leading zero, at most a BIGINT
_JOB_ID = {"name": "job_id", "in": "path", "required": True,
           "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
           "description": "digits 0-9 only, no sign, no leading zero; anything else is answered 400"}
_DISPOSITION = {"name": "X-Content-Disposition", "in": "header", "required": False, "schema": {"type": "string"},
                "description": "the sample's content disposition, e.g. inline or attachment"}
_JOB = {
    "type": "object",
    "properties": {
        "job_id": {"type": "integer"},
        "state": {"type": "string", "enum": ["pending", "done"]},
        "result": {"anyOf": [_RESULT, {"type": "null"}]},
        "reason": {"type": ["string", "null"]},
        "rules": {"type": "array", "items": {"type": "object", "properties": {
            "rule": {"type": "string"}, "result": _RESULT, "reason": {"type": "string"}}}},
        "sample": {"type": "object", "properties": {
            k: {"type": ["string", "null"]} for k in ("filename", "type_declared", "content_disposition",
                                                       "file_extension", "type_by_name", "type_by_content",
                                                       "sha256", "sha1", "md5", "identity")} | {
            "size": {"type": "integer"}}},
        "created_at": {"type": "string", "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
    },
}

_ACTION = {"type": "string", "enum": ["accept", "tempfail", "reject", "quarantine", "discard"]}
_PART = {"type": "object", "properties": {
    "filename": {"type": ["string", "null"]}, "content_type": {"type": ["string", "null"]},
    "disposition": {"type": ["string", "null"]}, "size": {"type": "integer"}, "sha256": {"type": ["string", "null"]},
    "job_id": {"type": ["integer", "null"], "description": "null when a cached verdict answered"},
    "state": {"type": "string", "enum": ["pending", "done"]}, "result": {"anyOf": [_RESULT, {"type": "null"}]},
    "reason": {"type": ["string", "null"]}}}
_DECISION = {
    "type": "object",
    "required": ["support_id", "action", "code", "status", "text", "reply", "verdict", "header", "parts"],
    "properties": {
        "support_id": {"type": "string", "description": "finds the message: GET /v2/messages/{support_id}"},
        "action": _ACTION,
        "code": {"type": "integer", "description": "SMTP reply code: 250, 451 or 554"},
        "status": {"type": "string", "description": "enhanced status code, e.g. 5.7.1"},
        "text": {"type": "string"},
        "reply": {"type": "string", "description": "the whole SMTP reply: code, status, text and support id"},
        "verdict": {"type": "string", "description": "worst part result, pending, clean or unparsable"},
        "header": {"type": ["object", "null"], "description": "to add to accepted and quarantined mail",
                   "properties": {"name": {"type": "string"}, "value": {"type": "string"}}},
        "parts": {"type": "array", "items": _PART},
        "incomplete": {"type": "boolean", "description": "a limit stopped the extraction"},
        "findings": {"type": "array", "items": {"type": "string"}},
        "envelope": {"type": "object"},
    },
}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema or {"type": "string"},
            "description": description}


def _resp(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document() -> dict[str, Any]:
    errors = {"400": _resp("bad request: not a well-formed form, or the client went away", _MESSAGE),
              "401": _resp("missing or wrong bearer token", _MESSAGE),
              "408": _resp("headers or body not received within server.read_timeout", _MESSAGE),
              "413": _resp("sample larger than max_sample_size", _MESSAGE),
              "503": _resp("queue full; see Retry-After", _MESSAGE)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailowl", "version": __version__,
                 "description": "Email attachment analysis. v1 is PeekabooAV 2.1's API; v2 adds job states, "
                                "long-polling, per-rule results and sample facts."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
        "paths": {
            "/": {"get": {"summary": "greeting (used as a liveness probe)",
                          "responses": {"200": _resp("hello", {"type": "object"})}}},
            "/ping": {"get": {"summary": "ping", "responses": {"200": _resp("pong", {"type": "object"})}}},
            "/v1/scan": {"post": {"summary": "submit a sample (PeekabooAV v1)", "parameters": [_DISPOSITION],
                                  "requestBody": _UPLOAD,
                                  "responses": {"200": _resp("queued", {"type": "object", "properties": {
                                      "job_id": {"type": "integer"}}}), **errors}}},
            "/v1/report/{job_id}": {"get": {
                "summary": "verdict of a job (PeekabooAV v1); 404 while pending",
                "parameters": [_JOB_ID],
                "responses": {"200": _resp("verdict", {"type": "object", "properties": {
                    "result": _RESULT, "reason": {"type": "string"}}}),
                    "400": _resp("job id 0 or not a job id", _MESSAGE), "404": _resp("pending or unknown", _MESSAGE)}}},
            "/v2/scan": {"post": {
                "summary": "submit a sample; optional form field options = JSON {force: bool, wait: seconds}",
                "parameters": [_DISPOSITION],
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["file"], "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "options": {"type": "string", "description": 'JSON, e.g. {"wait": 10, "force": true}'}}}}}},
                "responses": {"200": _resp("finished within wait", _JOB), "202": _resp("queued", _JOB), **errors}}},
            "/v2/jobs/{job_id}": {"get": {
                "summary": "a job with its state, verdict, every rule's result and the sample's facts",
                "parameters": [
                    _JOB_ID,
                    {"name": "wait", "in": "query", "required": False,
                     "schema": {"type": "number", "minimum": 0, "maximum": 300},
                     "description": "long-poll: seconds to wait for the verdict"}],
                "responses": {"200": _resp("job", _JOB), "400": _resp("bad id or wait", _MESSAGE),
                              "404": _resp("no such job", _MESSAGE)}}},
            "/v2/messages": {"post": {
                "summary": "mailowl's decision for a whole message: the milter's extraction and policy",
                "parameters": [
                    _query("from", "envelope sender"),
                    {**_query("rcpt", "envelope recipient; repeat for several"), "explode": True},
                    _query("ip", "the SMTP client's address"), _query("hostname", "the SMTP client's name"),
                    _query("helo", "the SMTP client's HELO/EHLO name"), _query("queue_id", "the MTA's queue id"),
                    _query("wait", "seconds to wait for verdicts before answering tempfail (default mail.wait)",
                           {"type": "number", "minimum": 0, "maximum": 300})],
                "requestBody": {"required": True, "content": {"message/rfc822": {"schema": {
                    "type": "string", "format": "binary", "description": "the raw RFC 5322 message"}}}},
                "responses": {"200": _resp("the decision (also for reject and tempfail)", _DECISION),
                              "400": _resp("unknown or malformed query parameter, empty body", _MESSAGE),
                              "401": errors["401"], "408": errors["408"],
                              "413": _resp("message larger than 4 × max_sample_size", _MESSAGE),
                              "415": _resp("Content-Type is not message/rfc822", _MESSAGE),
                              "503": _resp("store unavailable; see Retry-After", _MESSAGE)}}},
            "/v2/messages/{support_id}": {"get": {
                "summary": "a decided message: envelope, action, reply, every part with its job",
                "parameters": [{"name": "support_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _resp("message record", {"type": "object"}),
                              "400": _resp("not a support id", _MESSAGE), "404": _resp("no such message", _MESSAGE)}}},
            "/healthz": {"get": {"summary": "health (no token needed)", "security": [],
                                 "responses": {"200": _resp("ok", {"type": "object"})}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text exposition format"}}}},
            "/openapi.json": {"get": {"summary": "this document",
                                      "responses": {"200": _resp("OpenAPI", {"type": "object"})}}},
        },
    }
