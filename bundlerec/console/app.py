"""The console's web application (Starlette, Jinja2 templates rendered on the server, Chart.js served
from the package: nothing is fetched from outside). Every page needs a signed-in operator; the one
write, promoting or rolling back a model version, needs the console/models permission and the
version typed again. The access log names the operator, the method and the path, never a query
string (a preview's shopper id travels there)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bundlerec.console.access import COOKIE, Access, Operator
from bundlerec.console.health import GatewayMetrics
from bundlerec.console.models import ModelsView
from bundlerec.console.settings import ConsoleSettings
from bundlerec.console.suite import PLACEMENTS, Failed, Suite

log = logging.getLogger("bundlerec.console")
OPEN_PATHS = ("/login", "/static/", "/healthz")
MAX_FIELD = 200  # characters of an identifier or a query typed into a form


class BadInput(ValueError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")


def create_app(settings: ConsoleSettings, access: Access, *, secure_cookie: bool = False) -> Starlette:
    templates = Environment(loader=PackageLoader("bundlerec.console", "templates"), autoescape=select_autoescape())
    templates.filters["enum"] = _enum_text
    templates.filters["money"] = lambda value: "" if value in (None, "") else f"{float(value):,.2f}"
    templates.filters["percent"] = _percent
    metrics = GatewayMetrics(settings.gateway_metrics_url, settings.metrics_period_seconds)
    models = ModelsView(Path(settings.models_dir), settings.max_model_age_days)

    def render(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        operator: Operator | None = request.scope.get("operator")
        html = templates.get_template(name).render(operator=operator, path=request.url.path, **values)
        return HTMLResponse(html, status_code=status)

    async def login(request: Request) -> Response:
        token = request.query_params.get("token", "")
        if request.method == "POST":
            token = str((await request.form()).get("token", ""))
        if token:
            if access.operator(token) is None:
                return render(request, "login.html", 401, error="That token is not known.")
            response = RedirectResponse("/", status_code=303)  # the token leaves the address bar
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure_cookie)
            return response
        return render(request, "login.html")

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    async def health(request: Request) -> Response:
        readiness, info = await asyncio.gather(_suite(request).readiness(), _suite(request).model_info())
        seconds, pages, degraded = metrics.recent()
        rows = sorted(((stage, reason, int(n)) for (stage, reason), n in degraded.items()), key=lambda r: -r[2])
        return render(
            request,
            "health.html",
            readiness=readiness,
            model=info,
            window_seconds=seconds,
            pages=int(pages),
            degraded=rows,
            metrics_error=metrics.error,
        )

    async def preview(request: Request) -> Response:
        query = request.query_params
        form = {
            "user_id": query.get("user_id", "").strip(),
            "session_id": query.get("session_id", "").strip(),
            "placement": query.get("placement", "home"),
            "anchor": query.get("anchor", "").strip(),
            "budget": query.get("budget", "").strip(),
            "page_size": query.get("page_size", "10").strip(),
        }
        values: dict[str, Any] = {"form": form, "placements": list(PLACEMENTS)}
        if "placement" not in query:
            return render(request, "preview.html", **values)
        try:
            budget, page_size = _checked_preview(form)
        except BadInput as error:
            return render(request, "preview.html", 400, error=str(error), **values)
        if not form["user_id"] and not form["session_id"]:
            form["session_id"] = "console-preview"  # an anonymous visitor
        result = await _suite(request).preview(
            user_id=form["user_id"],
            session_id=form["session_id"],
            placement=form["placement"],
            anchor=form["anchor"],
            budget=budget,
            page_size=page_size,
        )
        if isinstance(result, Failed):
            return render(request, "preview.html", 502 if result.status != "INVALID_ARGUMENT" else 400,
                          failed=result, **values)  # fmt: skip
        return render(request, "preview.html", result=result, **values)

    async def catalogue(request: Request) -> Response:
        text = request.query_params.get("q", "").strip()
        values: dict[str, Any] = {"q": text}
        if text:
            if len(text) > 512:
                return render(request, "catalogue.html", 400, error="q: at most 512 characters", **values)
            suite = _suite(request)
            found, bundles = await asyncio.gather(suite.search(text), suite.bundles([text[:MAX_FIELD]]))
            values["results"], values["bundles"] = found, bundles
        return render(request, "catalogue.html", **values)

    async def bundle(request: Request) -> Response:
        bundle_id = request.path_params["bundle_id"][:MAX_FIELD]
        found = await _suite(request).bundles([bundle_id])
        if isinstance(found, list) and not found:
            return render(request, "bundle.html", 404, missing=bundle_id)
        return render(request, "bundle.html", found=found)

    async def item(request: Request) -> Response:
        item_id = request.path_params["item_id"][:MAX_FIELD]
        holding = await _suite(request).bundles_holding(item_id)
        found = await _suite(request).bundles(holding) if isinstance(holding, list) and holding else holding
        return render(request, "item.html", item_id=item_id, found=found)

    async def models_page(request: Request, status: int = 200, **extra: Any) -> Response:
        info = await _suite(request).model_info()
        return render(request, "models.html", status, view=models.read(), served=info, **extra)

    async def change_model(request: Request) -> Response:
        operator: Operator = request.scope["operator"]
        if not operator.may_change_models:
            return await models_page(request, 403, error=f"{operator.name} may not change the serving version.")
        form = await request.form()
        action = request.path_params["action"]
        target = str(form.get("version", ""))[:MAX_FIELD]
        if str(form.get("confirm", "")).strip() != target or not target:
            return await models_page(request, 400, error="confirm: type the version's name to confirm.")
        try:
            decision = models.change(action, target, operator.name)
        except ValueError as error:
            return await models_page(request, 409, error=str(error))
        log.info("model %s: %s by %s", action, decision.version, operator.name)
        reloaded = await _suite(request).reload_model()
        note = f"{decision.decision}: {decision.version} (was {decision.previous or 'none'})"
        if isinstance(reloaded, Failed):
            note += f"; the ranker did not reload at once ({reloaded.status}): it follows within seconds"
        return await models_page(request, notice=note)

    async def experiments(request: Request) -> Response:
        days = request.query_params.get("days", "7")
        if not days.isdigit() or not 1 <= int(days) <= 90:
            return render(request, "experiments.html", 400, error="days: a whole number from 1 to 90", days=days)
        since = dt.datetime.now(dt.UTC) - dt.timedelta(days=int(days))
        try:
            doc = await asyncio.to_thread(_report, settings, since)
        except grpc.RpcError as error:  # the page says what failed instead of a trace
            return render(request, "experiments.html", 502, error=_what_failed(error), days=days)
        chart = json.dumps(_chart(doc)).replace("<", "\\u003c")  # a variant's name cannot end the script
        return render(request, "experiments.html", doc=doc, days=days, chart=chart)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.suite = Suite(settings)  # grpc.aio channels belong to the loop that made them: this one
        task = asyncio.create_task(metrics.run())
        try:
            yield
        finally:
            task.cancel()
            await app.state.suite.close()

    routes = [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/healthz", lambda request: PlainTextResponse("ok")),
        Route("/", health),
        Route("/preview", preview),
        Route("/catalogue", catalogue),
        Route("/catalogue/bundles/{bundle_id}", bundle),
        Route("/catalogue/items/{item_id}", item),
        Route("/models", models_page),
        Route("/models/{action:str}", change_model, methods=["POST"]),
        Route("/experiments", experiments),
        Mount("/static", StaticFiles(packages=[("bundlerec.console", "static")]), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(_Guard, access=access)
    return app


def _suite(request: Request) -> Suite:
    suite: Suite = request.app.state.suite
    return suite


class _Guard:
    """Lets a request through only with a known operator (cookie or bearer token), and writes the
    access log line. A browser without one is sent to /login; a script gets 401."""

    def __init__(self, app: Callable[..., Awaitable[None]], access: Access) -> None:
        self.app, self.access = app, access

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = request.url.path
        status = {"code": 0}

        async def sent(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        if path.startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
        operator = self.access.operator(token)
        if operator is None:
            wants_html = "text/html" in request.headers.get("accept", "")
            response: Response = (
                RedirectResponse("/login", status_code=303) if wants_html and not header
                else PlainTextResponse("sign in: a console token (cookie or Authorization: Bearer)", status_code=401)
            )  # fmt: skip
            await response(scope, receive, sent)
            log.info("%s %s %s (no operator)", request.method, path, status["code"])
            return
        scope["operator"] = operator
        await self.app(scope, receive, sent)
        log.info("%s %s %s %s", request.method, path, status["code"], operator.name)


def _checked_preview(form: dict[str, str]) -> tuple[float | None, int]:
    for name in ("user_id", "session_id", "anchor"):
        if len(form[name]) > MAX_FIELD:
            raise BadInput(name, f"at most {MAX_FIELD} characters")
    if form["placement"] not in PLACEMENTS:
        raise BadInput("placement", f"one of {', '.join(PLACEMENTS)}")
    budget = None
    if form["budget"]:
        try:
            budget = float(form["budget"])
        except ValueError:
            raise BadInput("budget", "a number") from None
        if not math.isfinite(budget) or budget < 0:
            raise BadInput("budget", "a number of at least 0")
    if not form["page_size"].isdigit() or not 1 <= int(form["page_size"]) <= 50:
        raise BadInput("page_size", "a whole number from 1 to 50")
    return budget, int(form["page_size"])


def _report(settings: ConsoleSettings, since: dt.datetime) -> dict[str, Any]:
    from bundlerec.commands.experiments import read_pages
    from bundlerec.online.report import report

    pages = list(read_pages(settings.profile_address, settings.client_security(), since, None, 0))
    return report(pages)


def _what_failed(error: grpc.RpcError) -> str:
    return f"The profile service did not answer: {error.code().name}: {error.details()}"  # type: ignore[attr-defined]


def _chart(doc: dict[str, Any]) -> dict[str, Any]:
    """Per metric, per variant: the rate and its 95 % interval overall and per day (Chart.js data)."""
    out: dict[str, Any] = {"variants": sorted(doc.get("variants", {})), "days": sorted(doc.get("daily", {}))}
    for metric in ("click_through", "add_to_cart", "purchase", "revenue_per_page"):
        out[metric] = {
            variant: {
                "overall": _estimate(doc["variants"][variant][metric]),
                "daily": [_estimate(doc["daily"][day].get(variant, {}).get(metric)) for day in out["days"]],
            }
            for variant in out["variants"]
        }
    return out


def _estimate(value: dict[str, float] | None) -> list[float | None] | None:
    if not value:
        return None
    return [_finite(value.get("value")), _finite(value.get("low")), _finite(value.get("high"))]


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _enum_text(value: Any) -> str:
    """BUNDLE_KIND_CURATED → curated, DEGRADATION_REASON_UNAVAILABLE → unavailable (proto enum names)."""
    text = str(value or "")
    for prefix in ("BUNDLE_KIND_", "BUNDLE_SOURCE_", "STAGE_", "RULE_ACTION_KIND_", "TARGET_TYPE_", "EVENT_TYPE_"):
        if text.startswith(prefix):
            return text.removeprefix(prefix).lower().replace("_", " ")
    return text.lower()


def _percent(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{100 * value:.2f}%"
