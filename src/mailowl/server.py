"""Wiring: configuration -> ruleset -> store -> analysis service -> REST API on uvicorn."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from mailowl import notify
from mailowl.api.app import create_app
from mailowl.api.transport import http_protocol
from mailowl.config import Config, split_listen
from mailowl.core.service import AnalysisService
from mailowl.logs.verdicts import VerdictLog
from mailowl.mail.milter import MilterServer
from mailowl.mail.parts import limits_for
from mailowl.mail.policy import MailPolicy
from mailowl.mail.smtp import ContentFilter
from mailowl.rules.engine import Engine
from mailowl.rules.loader import engine_for
from mailowl.store import Store
from mailowl.web.app import create_ui, with_ui

log = logging.getLogger("mailowl")


def build_service(config: Config, engine: Engine | None = None) -> AnalysisService:
    engine = engine or engine_for(config)
    store = Store(config.store_url, max_age=config.store.max_age, memory_jobs=config.store.memory_jobs,
                  purge_min_age=config.store.purge_min_age, sqlite_synchronous=config.store.sqlite_synchronous,
                  lease=config.store.lease)
    log = VerdictLog.from_config(config.log)
    return AnalysisService(engine, store, queue_size=config.queue.size, workers=config.queue.workers,
                           verdict_log=log, timeout=config.analysis.timeout,
                           # a worker must at least hold the largest upload and one working copy of it
                           memory_limit=max(config.analysis.max_memory, 2 * config.server.max_sample_size))


@contextlib.asynccontextmanager
async def running(service: AnalysisService) -> AsyncIterator[AnalysisService]:
    await service.store.open()
    abandoned = await service.store.abandon_pending()
    if abandoned:
        log.warning("%d job(s) left pending by an earlier run were marked failed", abandoned)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        await service.store.flush()
        await service.store.close()
        service.verdict_log.close()


def mail_policy(config: Config) -> MailPolicy:
    mail = config.mail
    return MailPolicy(wait=mail.wait, on_bad=mail.on_bad, on_failed=mail.on_failed, on_unparsable=mail.on_unparsable,
                      reject_text=mail.reject_text, tempfail_text=mail.tempfail_text,
                      include_bodies=mail.include_bodies, header=mail.header,
                      limits=limits_for(config))


@contextlib.asynccontextmanager
async def ingress(config: Config, service: AnalysisService) -> AsyncIterator[None]:
    """The mail listeners: milter and SMTP content filter, as configured."""
    policy = mail_policy(config)
    started: list[Any] = []
    try:
        if config.milter.listen:
            milter = MilterServer(service, policy)
            await milter.start(*split_listen(config.milter.listen))
            started.append(milter)
        if config.smtp.listen:
            smtp = ContentFilter(service, policy, split_listen(config.smtp.listen), split_listen(config.smtp.next_hop),
                                 config.server.max_sample_size * 4)
            await smtp.start()
            started.append(smtp)
        yield
    finally:
        for listener in reversed(started):
            await listener.stop()


def make_asgi(config: Config, service: AnalysisService) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        async with running(service), ingress(config, service):
            log.info("mailowl ready on http://%s (milter %s, content filter %s) with rules: %s",
                     config.server.listen, config.milter.listen or "off", config.smtp.listen or "off",
                     ", ".join(service.engine.rule_names))
            yield

    api = create_app(service, config.server.max_sample_size, config.server.token, lifespan=lifespan,
                     report_wait=config.server.report_wait, policy=mail_policy(config))
    # the read-only web interface at /ui (mailowl/web), behind the same token
    ui = create_ui(lambda: service.store.engine, lambda: service.pending, config.server.token)
    return with_ui(api, ui)


def serve(config: Config, engine: Engine | None = None) -> None:
    # Analysis threads run Python too; a shorter GIL switch interval keeps the event loop answering.
    sys.setswitchinterval(0.001)
    service = build_service(config, engine)
    host, port = split_listen(config.server.listen)
    app = make_asgi(config, service)
    # one setting for every way a client can hold a connection without finishing a request
    timeout = config.server.read_timeout
    # uvicorn.run(), telling systemd (Type=notify) once every listener is up and when stopping
    notify.run(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                              http=http_protocol(timeout), loop="uvloop", timeout_keep_alive=timeout,
                              server_header=False, proxy_headers=False))

