"""The operator console in a real browser (Debian's chromium, driven by Selenium through its
chromedriver) against the four real services of a small demo shop, as a person would use it:
sign in, preview a shopper's page and see the bundles the gateway returned, a rule's action, a
stage's outage; search the catalogue; see the models and promote one only when allowed and
confirmed. Each check saves a screenshot under var/test-artifacts/console/."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bundlerec.ranking.promotion import pin_serving, promote, serving_version
from bundlerec.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.harness.processes import Services, four_services, free_port
from tests.harness.shops import Suite, buyer

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("BUNDLEREC_REQUIRE_BROWSER") == "1":
        raise RuntimeError("the console's browser tests need Debian's chromium and chromium-driver (.ci/run)")
    pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)  # fmt: skip
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
ARTIFACTS = Path(os.environ.get("BUNDLEREC_TEST_ARTIFACTS", "var/test-artifacts")) / "console"
VIEWER, ADMIN = "viewer-token-for-tests", "admin-token-for-tests"


@dataclass
class Stack:
    services: Services
    url: str
    rules: Path
    console: subprocess.Popen[bytes]
    log: Path


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture(scope="module")
def stack(suite: Suite, encoder_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("console")
    rules = root / "rules.toml"
    rules.write_text("")
    auth = root / "console-auth.toml"
    auth.write_text(
        f'[[caller]]\nname = "merchandiser"\ntoken_sha256 = ["{_digest(VIEWER)}"]\nallow = ["console/view"]\n'
        f'[[caller]]\nname = "ml-oncall"\ntoken_sha256 = ["{_digest(ADMIN)}"]\nallow = ["console/*"]\n'
    )
    metrics_port = free_port()
    with four_services(
        suite.profile_url,
        suite.catalogue_url,
        suite.models,
        encoder_dir,
        BUNDLEREC_GATEWAY_RULES_FILE=str(rules),
        BUNDLEREC_GATEWAY_RULES_POLL_SECONDS="0.1",
        BUNDLEREC_GATEWAY_METRICS_PORT=str(metrics_port),
        BUNDLEREC_GATEWAY_DEADLINE_MS="3000",
        BUNDLEREC_GATEWAY_EXPLORATION_SHARE="0",  # exploration draws at random: a page would differ per call
        BUNDLEREC_GATEWAY_EXPOSURE_FLUSH_MS="50",
    ) as services:
        port = free_port()
        env = {
            **os.environ,
            "BUNDLEREC_CONSOLE_PORT": str(port),
            "BUNDLEREC_CONSOLE_AUTH_FILE": str(auth),
            "BUNDLEREC_CONSOLE_MODELS_DIR": str(suite.models),
            "BUNDLEREC_CONSOLE_GATEWAY_METRICS_URL": f"http://127.0.0.1:{metrics_port}/metrics",
            "BUNDLEREC_CONSOLE_METRICS_PERIOD_SECONDS": "0.5",
            **{f"BUNDLEREC_CONSOLE_{name.upper()}_ADDRESS": services[name][1] for name in services},
        }
        log = root / "console.log"
        with log.open("wb") as out:
            console = subprocess.Popen([sys.executable, "-m", "bundlerec", "console"], env=env, stdout=out, stderr=out)
        url = f"http://127.0.0.1:{port}"
        _wait_for(f"{url}/healthz", console, log)
        try:
            yield Stack(services, url, rules, console, log)
        finally:
            console.send_signal(signal.SIGTERM)
            assert console.wait(timeout=30) == 0, log.read_text()[-2000:]


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the console exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the console did not answer in {seconds} s: {log.read_text()}")


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.implicitly_wait(5)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def sign_in(browser: webdriver.Chrome, stack: Stack, token: str) -> None:
    browser.delete_all_cookies()
    browser.get(f"{stack.url}/login")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "sign-in").click()
    assert browser.find_element(By.ID, "readiness")  # signed in: the health page


def absent(browser: webdriver.Chrome, by: str, value: str) -> bool:
    """No such element on the page as it is (without the implicit wait, which only delays a no)."""
    browser.implicitly_wait(0)
    try:
        return not browser.find_elements(by, value)
    finally:
        browser.implicitly_wait(5)


def shot(browser: webdriver.Chrome, name: str) -> None:
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def gateway_page(stack: Stack, **request: object) -> gateway_pb2.RecommendResponse:
    with grpc.insecure_channel(stack.services["gateway"][1]) as channel:
        stub = gateway_pb2_grpc.RecommendationServiceStub(channel)
        return stub.Recommend(gateway_pb2.RecommendRequest(**request, preview=True), timeout=10)


def preview(browser: webdriver.Chrome, stack: Stack, **fields: str) -> None:
    query = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in {"placement": "home", **fields}.items())
    browser.get(f"{stack.url}/preview?{query}")


def test_without_a_known_token_nothing_but_the_sign_in_page_opens(stack: Stack, browser: webdriver.Chrome) -> None:
    browser.delete_all_cookies()
    browser.get(f"{stack.url}/preview?placement=home&user_id=u1")
    assert browser.current_url.endswith("/login")  # sent to sign in, the page not shown
    browser.find_element(By.ID, "token").send_keys("not-a-token")
    browser.find_element(By.ID, "sign-in").click()
    assert "not known" in browser.find_element(By.ID, "error").text
    shot(browser, "sign-in-refused")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{stack.url}/models", headers=headers), timeout=5)
        assert refused.value.code == 401


def test_the_preview_shows_the_page_the_gateway_builds_and_a_rule_removing_a_bundle(
    stack: Stack, browser: webdriver.Chrome, suite: Suite
) -> None:
    user = buyer(suite)
    sign_in(browser, stack, VIEWER)
    preview(browser, stack, user_id=user, page_size="6")
    expected = gateway_page(stack, user_id=user, page_size=6)
    shown = [e.get_attribute("data-bundle-id") for e in browser.find_elements(By.CSS_SELECTOR, "#bundles > li")]
    assert shown == [b.bundle_id for b in expected.bundles] and shown
    first = browser.find_element(By.CSS_SELECTOR, "#bundles > li")
    assert expected.bundles[0].explanation in first.text
    assert browser.find_element(By.ID, "personalized")
    assert {e.text.split()[0] for e in browser.find_elements(By.CSS_SELECTOR, "#stages tr td:first-child")} >= {
        "profile", "candidates", "ranker", "rules",
    }  # fmt: skip
    shot(browser, "preview")
    # a merchandiser blocks an item of the page's first bundle: the preview shows the rule at work
    blocked = expected.bundles[0].items[0].item_id
    stack.rules.write_text(f'blocklist_items = ["{blocked}"]\n')
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        preview(browser, stack, user_id=user, page_size="6")
        table = browser.find_elements(By.ID, "rule-actions")
        if table and "blocklist" in table[0].text:
            break
        time.sleep(0.3)
    shot(browser, "preview-rule-action")
    actions = browser.find_element(By.ID, "rule-actions").text
    assert "blocklist" in actions and blocked in actions, actions
    on_page = [e.get_attribute("data-item-id") for e in browser.find_elements(By.CSS_SELECTOR, ".items li")]
    assert blocked not in on_page, actions
    stack.rules.write_text("")


def test_a_shopper_without_consent_shows_nothing_of_their_history(stack: Stack, browser: webdriver.Chrome) -> None:
    sign_in(browser, stack, VIEWER)
    with grpc.insecure_channel(stack.services["gateway"][1]) as channel:
        stub = gateway_pb2_grpc.RecommendationServiceStub(channel)
        stub.SetUserConsent(gateway_pb2.SetUserConsentRequest(user_id="u-no-consent", personalization=False))
    preview(browser, stack, user_id="u-no-consent")
    assert browser.find_element(By.ID, "not-personalized")
    assert "personalization no" in browser.find_element(By.ID, "consent").text
    assert absent(browser, By.ID, "history")
    shot(browser, "preview-no-consent")


def test_bad_input_is_named_and_a_ranker_outage_shows_as_degraded(
    stack: Stack, browser: webdriver.Chrome, suite: Suite
) -> None:
    sign_in(browser, stack, VIEWER)
    preview(browser, stack, user_id="u1", budget="lots")
    assert "budget" in browser.find_element(By.ID, "error").text
    preview(browser, stack, user_id="u" * 300)
    assert "user_id" in browser.find_element(By.ID, "error").text
    preview(browser, stack, user_id="bad\x01id")  # a control character: the gateway's own check
    assert "INVALID_ARGUMENT" in browser.find_element(By.ID, "failed").text
    process, _ = stack.services["ranker"]
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    try:
        preview(browser, stack, user_id=buyer(suite))
        degraded = browser.find_element(By.ID, "degraded")
        assert degraded.find_element(By.CSS_SELECTOR, "li[data-stage='ranker']")
        assert browser.find_elements(By.CSS_SELECTOR, "#bundles > li")  # the page still has bundles
        shot(browser, "preview-ranker-down")
        time.sleep(1.5)  # the console reads the gateway's counters twice a second here (every 10 s by default)
        browser.get(f"{stack.url}/")
        assert browser.find_element(By.CSS_SELECTOR, "td[data-service='ranker']").text != "SERVING"
        assert browser.find_element(By.CSS_SELECTOR, "td[data-service='gateway']").text == "SERVING"
        stages = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#degradations tr.bad")]
        assert any(row.startswith("ranker ") for row in stages), stages  # the outage, counted by stage
        shot(browser, "health-ranker-down")
    finally:
        stack.services.start("ranker")


def test_the_catalogue_finds_items_and_shows_a_bundles_members(
    stack: Stack, browser: webdriver.Chrome, suite: Suite
) -> None:
    sign_in(browser, stack, VIEWER)
    _, (_, _, _, title) = next(iter(suite.items.items()))
    browser.get(f"{stack.url}/catalogue")
    browser.find_element(By.ID, "q").send_keys(title)
    browser.find_element(By.ID, "search").click()
    assert title in browser.find_element(By.ID, "results").text
    shot(browser, "catalogue-search")
    page = gateway_page(stack, user_id=buyer(suite), page_size=10)
    bundle = next(b for b in page.bundles if b.bundle_id)
    browser.get(f"{stack.url}/catalogue/bundles/{bundle.bundle_id}")
    members = [
        e.get_attribute("data-item-id") for e in browser.find_elements(By.CSS_SELECTOR, "#members tr[data-item-id]")
    ]
    assert sorted(members) == sorted(i.item_id for i in bundle.items)
    assert "stock" in browser.find_element(By.ID, "members").text
    shot(browser, "catalogue-bundle")


def test_models_are_listed_and_only_an_allowed_confirmed_operator_promotes(
    stack: Stack, browser: webdriver.Chrome, suite: Suite
) -> None:
    serving = serving_version(suite.models)
    sign_in(browser, stack, VIEWER)
    browser.get(f"{stack.url}/models")
    assert browser.find_element(By.ID, "serving").text == serving
    assert absent(browser, By.CSS_SELECTOR, "form.confirm")  # a viewer gets no buttons
    shot(browser, "models-viewer")
    request = urllib.request.Request(
        f"{stack.url}/models/promote", data=f"version={serving}&confirm={serving}".encode(), method="POST",
        headers={"Authorization": f"Bearer {VIEWER}"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    # a second version to promote: a copy of the serving one under a newer name, the serving one
    # pinned (else the newest complete version serves by itself)
    pin_serving(suite.models)
    newer = f"{serving}-copy"
    shutil.copytree(suite.models / serving, suite.models / newer)
    try:
        sign_in(browser, stack, ADMIN)
        browser.get(f"{stack.url}/models")
        row = browser.find_element(By.CSS_SELECTOR, f"tr[data-version='{newer}']")
        row.find_element(By.TAG_NAME, "button").click()  # without typing the version
        assert "confirm" in browser.find_element(By.ID, "error").text
        assert serving_version(suite.models) == serving
        row = browser.find_element(By.CSS_SELECTOR, f"tr[data-version='{newer}']")
        row.find_element(By.NAME, "confirm").send_keys(newer)
        row.find_element(By.TAG_NAME, "button").click()
        assert newer in browser.find_element(By.ID, "notice").text
        assert serving_version(suite.models) == newer
        assert browser.find_element(By.ID, "ranker-version").text == newer  # the ranker reloaded at once
        shot(browser, "models-promoted")
        row = browser.find_element(By.CSS_SELECTOR, f"tr[data-version='{serving}']")
        button = row.find_element(By.TAG_NAME, "button")
        assert button.text == "Roll back to it"  # the version that served before
        row.find_element(By.NAME, "confirm").send_keys(serving)
        button.click()
        # the old page's notice until the new page replaces it (then stale for a moment)
        WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda b: "rolled back" in b.find_element(By.ID, "notice").text
        )
        assert serving_version(suite.models) == serving
        shot(browser, "models-rolled-back")
    finally:
        if serving_version(suite.models) != serving:
            promote(suite.models, serving, "test: back to the original")
        shutil.rmtree(suite.models / newer)


def test_the_experiments_page_reports_the_pages_served_and_their_clicks(
    stack: Stack, browser: webdriver.Chrome, suite: Suite
) -> None:
    with grpc.insecure_channel(stack.services["gateway"][1]) as channel:
        stub = gateway_pb2_grpc.RecommendationServiceStub(channel)
        pages = [stub.Recommend(gateway_pb2.RecommendRequest(session_id=f"v{n}", page_size=4)) for n in range(6)]
        clicked = pages[0].bundles[0].items[0].item_id
        target = common_pb2.TargetRef(type=common_pb2.TARGET_TYPE_ITEM, id=clicked)
        event = common_pb2.Event(event_id="console-click-1", user_id="v0", type=common_pb2.EVENT_TYPE_CLICK,
                                 target=target, recommendation_id=pages[0].recommendation_id)  # fmt: skip
        stub.Track(gateway_pb2.TrackRequest(events=[event]))
    sign_in(browser, stack, VIEWER)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the gateway records pages in the background
        browser.get(f"{stack.url}/experiments")
        rows = browser.find_elements(By.CSS_SELECTOR, "#variants tr[data-variant]")
        if rows and int(rows[0].find_elements(By.TAG_NAME, "td")[1].text) >= 6 and "%" in rows[0].text:
            break
        time.sleep(0.3)
    shot(browser, "experiments")
    (row,) = browser.find_elements(By.CSS_SELECTOR, "#variants tr[data-variant]")
    assert row.get_attribute("data-variant") == "default" and int(row.find_elements(By.TAG_NAME, "td")[1].text) >= 6
    assert not row.find_elements(By.TAG_NAME, "td")[2].text.startswith("0.00%")  # the click, attributed
    assert browser.find_element(By.ID, "rates").size["height"] > 0  # the chart drew


def test_the_console_log_names_operators_never_shoppers(stack: Stack, browser: webdriver.Chrome) -> None:
    sign_in(browser, stack, VIEWER)
    preview(browser, stack, user_id="shopper-secret-42")
    time.sleep(0.3)
    text = stack.log.read_text()
    assert "GET /preview 200 merchandiser" in text
    assert "shopper-secret-42" not in text
