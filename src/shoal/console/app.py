"""The console's HTTP side (aiohttp): pages rendered with Jinja2, the same
data as JSON under /api, actions behind a confirm step.

Every page but /login and /static needs a session (a SCRAM user's login);
/api also takes HTTP Basic with the same user and password, for scripts.
Pages mark their live region; static/live.js re-fetches it (`?partial=1`)
every few seconds, so the page updates without a reload and works (without
the updates) with scripts off.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web

from shoal.broker.broker import Broker
from shoal.console import data, links, txns
from shoal.console.actions import ACTIONS, ActionError, Denied
from shoal.console.auth import COOKIE, ConsoleUser, Sessions, check_password
from shoal.console.charts import line_chart
from shoal.console.metrics import SiteCollector
from shoal.console.sites import SORT_KEYS, SiteBook, SiteReader

log = logging.getLogger("shoal.console")

HERE = Path(__file__).parent
STATES = (
    "connected",
    "idle",
    "connecting",
    "degraded",
    "backoff",
    "error",
    "fenced",
    "silent",
    "stopped",
)
LIVE_MS = 3000
DEFAULT_LIMIT = 200  # fleet rows per page: a page of a thousand sites is slow to render
MAX_LIMIT = 100_000
LAG_SAMPLE_S = 5.0  # how often every group's lag is sampled for its chart
OLDER_MIN = 5  # an open transaction older than this many minutes is highlighted
MAX_OLDER_MIN = 7 * 24 * 60
STILL = ("login.html", "error.html", "confirm.html", "result.html")  # no live updates
USER = "shoal.console.user"  # request key of the logged-in ConsoleUser
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def human_age(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def utc(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Console:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        cfg = broker.config
        self.listen = str(cfg["console.listen"])
        self.book = SiteBook()
        self.reader = SiteReader(broker, str(cfg["console.sites.topic"]), self.book)
        self.sessions = Sessions(int(cfg["console.session.timeout.ms"]) / 1000)
        self.rates = data.OffsetRates()
        self.lags = data.LagHistory()
        self.link_rates = data.OffsetRates()  # bytes copied per mirror partition
        self._sampler: asyncio.Task[None] | None = None
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters.update(bytes=human_bytes, age=human_age, utc=utc)
        self.app = web.Application(middlewares=[self._errors, self._auth], client_max_size=64 << 10)
        self._routes()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # life cycle ----------------------------------------------------------------

    async def start(self) -> None:
        host, _, port = self.listen.rpartition(":")
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, int(port), reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(exc.errno, exc.strerror, f"console.listen {self.listen}") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else int(port)
        self.reader.start()
        self._sampler = asyncio.create_task(self._sample_lag(), name="console-lag")
        log.info("console on http://%s:%d/", host, self.port)

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        await self.reader.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    @classmethod
    async def service(cls, broker: Broker) -> Console | None:
        """Start the console beside the broker when console.listen is set
        (a service of `shoal serve`), with its per-site Prometheus metrics on
        the broker's metrics endpoint."""
        if not broker.config["console.listen"]:
            return None
        console = cls(broker)
        await console.start()
        broker.collectors.append(SiteCollector(console.book).collect)
        return console

    async def _sample_lag(self) -> None:
        while True:
            try:
                rows = await data.groups_view(self.broker)
                self.lags.add(time.time(), {g["group"]: g["lag"] for g in rows})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sampling group lag failed; retrying")
            await asyncio.sleep(LAG_SAMPLE_S)

    # plumbing ------------------------------------------------------------------

    def _routes(self) -> None:
        r = self.app.router
        r.add_get("/", self.home)
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/fleet", self.fleet)
        r.add_get("/sites/{site}", self.site)
        r.add_get("/cluster", self.cluster)
        r.add_get("/topics", self.topics)
        r.add_get("/topics/{topic}", self.topic)
        r.add_get("/groups", self.groups)
        r.add_get("/groups/{group}", self.group)
        r.add_get("/links", self.links_page)
        r.add_get("/links/{link}", self.link_page)
        r.add_get("/transactions", self.transactions_page)
        r.add_post("/actions/{action}", self.action)
        for name in ("sites", "cluster", "topics", "groups", "links", "transactions"):
            r.add_get(f"/api/{name}", self.api)
        r.add_get("/api/sites/{site}", self.api)
        r.add_get("/api/topics/{topic}", self.api)
        r.add_get("/api/groups/{group}", self.api)
        r.add_get("/api/links/{link}", self.api)
        r.add_static("/static", HERE / "static", append_version=False)

    async def home(self, _request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/fleet")

    def _peer(self, request: web.Request) -> str:
        return f"{request.remote or 'unknown'}:0"

    def _basic(self, request: web.Request) -> tuple[str, str] | None:
        h = request.headers.get("Authorization", "")
        if not h.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(h[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user, password

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in ("/login",) or path.startswith("/static/"):
            return await handler(request)
        who = self.sessions.read(request.cookies.get(COOKIE), self._peer(request))
        if who is None and path.startswith("/api/"):
            basic = self._basic(request)
            if basic is not None and await check_password(self.broker, *basic):
                who = ConsoleUser(basic[0], self._peer(request), "basic")
        if who is None:
            if path.startswith("/api/"):
                return web.json_response(
                    {"error": "log in: a session cookie or HTTP Basic with a SCRAM user"},
                    status=401,
                    headers={"WWW-Authenticate": 'Basic realm="shoal console"'},
                )
            if request.method != "GET":
                return await self.page(
                    "error.html", request, None, status=403, message="log in first"
                )
            raise web.HTTPSeeOther("/login?next=" + quote(request.path_qs))
        request[USER] = who
        return await handler(request)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except (data.NotFound, BadParam) as exc:
            status = 404 if isinstance(exc, data.NotFound) else 400
            if request.path.startswith("/api/"):
                return web.json_response({"error": str(exc)}, status=status)
            who = request.get(USER)
            return await self.page("error.html", request, who, status=status, message=str(exc))
        except Exception:
            log.exception("console %s %s failed", request.method, request.path)
            return web.Response(status=500, text="internal error (logged on the broker)\n")

    async def page(
        self,
        name: str,
        request: web.Request,
        who: ConsoleUser | None,
        status: int = 200,
        **ctx: Any,
    ) -> web.Response:
        tmpl = self.env.get_template(name)
        authz = self.broker.authorizer
        full = {
            "who": who,
            "csrf": self.sessions.csrf(who) if who is not None else "",
            "authorizer": authz.enabled,
            "node": self.broker.node.node_id,
            "now": time.time(),
            "live_ms": LIVE_MS if request.method == "GET" and name not in STILL else 0,
            "path": request.path,
            **ctx,
        }
        # In a thread: a fleet of a thousand rows takes a while to render,
        # and the broker's Kafka clients share this event loop.
        if request.query.get("partial") == "1" and "live" in tmpl.blocks:
            block = tmpl.blocks["live"]
            body = await asyncio.to_thread(lambda: "".join(block(tmpl.new_context(full))))
        else:
            body = await asyncio.to_thread(tmpl.render, full)
        return web.Response(
            text=body,
            status=status,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'self'; style-src 'self'; "
                "img-src 'self' data:; frame-ancestors 'none'",
            },
        )

    # login ---------------------------------------------------------------------

    async def login_page(self, request: web.Request) -> web.Response:
        return await self.page("login.html", request, None, error=None, next=_next(request))

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        user = str(form.get("user", "")).strip()
        password = str(form.get("password", ""))
        target = _safe_next(str(form.get("next", "/fleet")))
        if not await check_password(self.broker, user, password):
            log.info("console login failed for %r from %s", user, request.remote)
            return await self.page(
                "login.html",
                request,
                None,
                status=401,
                error="unknown user or wrong password",
                next=target,
            )
        log.info("console login: User:%s from %s", user, request.remote)
        resp = web.HTTPSeeOther(target)
        resp.set_cookie(
            COOKIE,
            self.sessions.issue(user),
            httponly=True,
            samesite="Strict",
            path="/",
            secure=request.secure,
            max_age=int(self.sessions.ttl_s),
        )
        raise resp

    async def logout(self, request: web.Request) -> web.Response:
        who = _who(request)
        form = await request.post()
        if not self.sessions.check_csrf(who, _str(form.get("csrf"))):
            return await self.page(
                "error.html", request, who, status=403, message="CSRF token missing"
            )
        resp = web.HTTPSeeOther("/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    # pages ---------------------------------------------------------------------

    def _fleet_rows(
        self, request: web.Request, default_limit: int = DEFAULT_LIMIT
    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
        q = request.query
        state = q.get("state", "")
        if state and state not in STATES:
            raise BadParam(f"state: {state!r} is not one of {', '.join(STATES)}")
        sort = q.get("sort", "site")
        if sort not in SORT_KEYS:
            raise BadParam(f"sort: {sort!r} is not one of {', '.join(SORT_KEYS)}")
        desc = q.get("desc", "0") == "1"
        text = q.get("q", "")
        raw = q.get("limit", str(default_limit))
        if not _whole(raw) or not 1 <= int(raw) <= MAX_LIMIT:
            raise BadParam(f"limit: {raw!r} is not a number of sites from 1 to {MAX_LIMIT}")
        rows = self.book.rows(time.time(), state or None, text or None, sort, desc)
        params = {"state": state, "sort": sort, "desc": "1" if desc else "0", "q": text}
        params["limit"] = raw
        params["total"] = str(len(rows))
        return rows[: int(raw)], params

    async def fleet(self, request: web.Request) -> web.Response:
        rows, params = self._fleet_rows(request)
        counts: dict[str, int] = {}
        for r in self.book.rows(time.time()):
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        return await self.page(
            "fleet.html",
            request,
            _who(request),
            rows=rows,
            params=params,
            states=STATES,
            sort_keys=SORT_KEYS,
            counts=counts,
            topic=self.reader.topic,
        )

    def _site(self, name: str) -> Any:
        site = self.book.sites.get(name)
        if site is None:
            raise data.NotFound(f"no site {name!r} has reported")
        return site

    async def site(self, request: web.Request) -> web.Response:
        site = self._site(request.match_info["site"])
        hist = list(site.history)
        charts = [
            line_chart([(p.time, p.backlog_records) for p in hist], "backlog (records)"),
            line_chart([(p.time, p.rate_records_per_s) for p in hist], "rate", " rec/s"),
            line_chart([(p.time, p.oldest_unsent_age_s) for p in hist], "oldest unsent", " s"),
        ]
        return await self.page(
            "site.html",
            request,
            _who(request),
            row=site.row(time.time()),
            report=site.report,
            charts=charts,
        )

    async def cluster(self, request: web.Request) -> web.Response:
        view = await data.cluster_view(self.broker)
        return await self.page("cluster.html", request, _who(request), c=view)

    async def topics(self, request: web.Request) -> web.Response:
        rows = await data.topics_view(self.broker, self.rates)
        return await self.page("topics.html", request, _who(request), topics=rows)

    async def topic(self, request: web.Request) -> web.Response:
        view = await data.topic_view(self.broker, request.match_info["topic"], self.rates)
        live = [b["node_id"] for b in (await data.cluster_view(self.broker))["brokers"]]
        return await self.page("topic.html", request, _who(request), t=view, nodes=live)

    async def groups(self, request: web.Request) -> web.Response:
        rows = await data.groups_view(self.broker)
        return await self.page(
            "groups.html", request, _who(request), groups=rows, cluster=self.broker.cluster
        )

    async def group(self, request: web.Request) -> web.Response:
        view = await data.group_view(self.broker, request.match_info["group"])
        topics = sorted({r["topic"] for r in view["offsets"]})
        chart = line_chart(self.lags.of(view["group"]), "lag over time (records)")
        return await self.page(
            "group.html", request, _who(request), g=view, topics=topics, chart=chart
        )

    async def links_page(self, request: web.Request) -> web.Response:
        rows = await links.links_view(self.broker)
        return await self.page("links.html", request, _who(request), links=rows)

    async def link_page(self, request: web.Request) -> web.Response:
        view = await links.link_view(self.broker, request.match_info["link"], self.link_rates)
        return await self.page("link.html", request, _who(request), lk=view)

    def _txn_filters(self, request: web.Request) -> dict[str, Any]:
        q = request.query
        state = q.get("state", "")
        if state and state not in ("open", *txns.STATES):
            raise BadParam(f"state: {state!r} is not one of open, {', '.join(txns.STATES)}")
        raw = q.get("older", str(OLDER_MIN))
        if not _whole(raw) or not 1 <= int(raw) <= MAX_OLDER_MIN:
            raise BadParam(f"older: {raw!r} is not a number of minutes from 1 to {MAX_OLDER_MIN}")
        return {"state": state, "id": q.get("id", ""), "older": int(raw)}

    async def _transactions(self, f: dict[str, Any]) -> list[dict[str, Any]]:
        return await txns.transactions_view(
            self.broker, int(time.time() * 1000), f["older"] * 60_000, f["state"] or None, f["id"]
        )

    async def transactions_page(self, request: web.Request) -> web.Response:
        f = self._txn_filters(request)
        rows = await self._transactions(f)
        return await self.page(
            "transactions.html",
            request,
            _who(request),
            txns=rows,
            f=f,
            states=("open", *txns.STATES),
        )

    # actions -------------------------------------------------------------------

    async def action(self, request: web.Request) -> web.Response:
        who = _who(request)
        name = request.match_info["action"]
        fn = ACTIONS.get(name)
        if fn is None:
            raise data.NotFound(f"no action {name!r}")
        raw = await request.post()
        form = {k: _str(v) for k, v in raw.items()}
        if not self.sessions.check_csrf(who, form.get("csrf")):
            log.info("console: %s refused for %s: CSRF token missing or wrong", name, who)
            return await self.page(
                "error.html",
                request,
                who,
                status=403,
                message="refused: the form's CSRF token is missing or wrong; reload the page",
            )
        fields = {k: v for k, v in form.items() if k not in ("csrf", "confirm")}
        back = _safe_next(form.get("back", "/fleet"))
        if form.get("confirm") != "1":
            return await self.page(
                "confirm.html", request, who, action=name, fields=fields, back=back
            )
        try:
            message = await fn(self.broker, who, fields)
        except Denied as exc:
            return await self.page("result.html", request, who, status=403, ok=False,
                             message=f"refused: {exc}", back=back)  # fmt: skip
        except ActionError as exc:
            return await self.page("result.html", request, who, status=400, ok=False,
                             message=str(exc), back=back)  # fmt: skip
        return await self.page("result.html", request, who, ok=True, message=message, back=back)

    # JSON ----------------------------------------------------------------------

    async def api(self, request: web.Request) -> web.Response:
        parts = request.path.strip("/").split("/")
        what = parts[1]
        arg = (
            request.match_info.get("site")
            or request.match_info.get("topic")
            or request.match_info.get("group")
            or request.match_info.get("link")
        )
        body: Any
        if what == "sites" and arg:
            site = self._site(arg)
            body = {
                **site.row(time.time()),
                "report": site.report,
                "history": [
                    {
                        "time": p.time,
                        "backlog_records": p.backlog_records,
                        "backlog_bytes": p.backlog_bytes,
                        "rate_records_per_s": p.rate_records_per_s,
                        "oldest_unsent_age_s": p.oldest_unsent_age_s,
                    }
                    for p in site.history
                ],
            }
        elif what == "sites":
            body = {"sites": self._fleet_rows(request, MAX_LIMIT)[0]}
        elif what == "cluster":
            body = await data.cluster_view(self.broker)
        elif what == "topics" and arg:
            body = await data.topic_view(self.broker, arg, self.rates)
        elif what == "topics":
            body = {"topics": await data.topics_view(self.broker, self.rates)}
        elif what == "groups" and arg:
            body = await data.group_view(self.broker, arg)
            body["lag_history"] = [{"time": t, "lag": v} for t, v in self.lags.of(arg)]
        elif what == "links" and arg:
            body = await links.link_view(self.broker, arg, self.link_rates)
        elif what == "links":
            body = {"links": await links.links_view(self.broker)}
        elif what == "transactions":
            f = self._txn_filters(request)
            body = {"transactions": await self._transactions(f), "older_minutes": f["older"]}
        else:
            body = {"groups": await data.groups_view(self.broker)}
        return web.json_response(body, headers={"Cache-Control": "no-store"})


class BadParam(ValueError):
    """A query parameter the page does not know how to use: 400 naming it."""


def _who(request: web.Request) -> ConsoleUser:
    who = request[USER]
    assert isinstance(who, ConsoleUser)
    return who


def _whole(raw: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²', which int() refuses."""
    return raw.isascii() and raw.isdigit()


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _next(request: web.Request) -> str:
    return _safe_next(request.query.get("next", "/fleet"))


def _safe_next(target: str) -> str:
    """Only a path on this console (no open redirect to another site)."""
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target  # browsers read /\host as //host
    ):
        return "/fleet"
    return target
