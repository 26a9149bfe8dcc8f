"""The status page in a real headless Chromium, served by real exporters over the database of
a real scheduler whose tasks really ran (issue 21's acceptance).

One browser, one scheduler and two exporters for the module: ``reader`` as deployed by
default (no token, admin API off: read-only, open) and ``admin`` (read token and admin API).
The admin tests come last: they change tasks the read-only tests look at.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exporter.server import ExporterServer
from exporter.settings import ExporterSettings
from scheduler_core.client import Client
from scheduler_core.embedded import Scheduler
from tests.exporter.browser import headless_chromium, screenshot_dir, wait_for
from tests.exporter.ui_jobs import OUTPUT_LINE, XSS_ALERT, XSS_FLAG

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(180)]

READ_TOKEN = "read-token-of-the-ui-tests"
ADMIN_TOKEN = "admin-token-of-the-ui-tests-0123456789"
GRAFANA = "https://grafana.example.com"
#: Any character may be in a task name: a slash, markup, an ampersand, quotes.
ODD_NAME = 'etl/<b>nightly</b> & "quotes"'
#: Enough tasks for two pages of 100 and a scrollable second page.
FILLERS = 160
JOBS = "tests.exporter.ui_jobs"


@dataclass
class World:
    url: str
    reader: ExporterServer
    admin: ExporterServer
    scheduler: Scheduler
    driver: Any

    def client(self) -> Client:
        return Client(self.url, actor="ui-test-setup")


def _tasks() -> list[dict[str, Any]]:
    hourly = {"every": "1h"}
    tasks: list[dict[str, Any]] = [
        {"name": "hello", "callable": f"{JOBS}:say_hello", **hourly},
        {"name": "broken", "callable": f"{JOBS}:fail_with_markup", **hourly},
        {"name": ODD_NAME, "callable": f"{JOBS}:do_nothing", **hourly},
        {"name": "parked", "callable": f"{JOBS}:do_nothing", **hourly},
        {"name": "switched-off", "callable": f"{JOBS}:do_nothing", "enabled": False, **hourly},
    ]
    tasks += [
        {"name": f"filler-{i:03d}", "callable": f"{JOBS}:do_nothing", **hourly}
        for i in range(FILLERS)
    ]
    return tasks


def _wait_for_runs(client: Client, names: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finished = {
            n for n in names if any(r["status"] != "running" for r in client.list_runs(task=n))
        }
        if finished == set(names):
            return
        time.sleep(0.1)
    raise AssertionError(f"runs of {names} did not finish within {timeout:g}s")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    url = f"sqlite:///{tmp_path_factory.mktemp('status-page') / 'schedctl.db'}"
    scheduler = Scheduler.from_url(
        url, tasks=_tasks(), instance_id="ui-test-node:1", poll_interval=0.2,
        heartbeat_interval=1.0,
    ).start()  # fmt: skip
    reader = ExporterServer(
        settings=ExporterSettings(port=0, refresh_interval=1.0, grafana_url=GRAFANA),
        database_url=url,
    )
    admin = ExporterServer(
        settings=ExporterSettings(
            port=0, refresh_interval=1.0, token=READ_TOKEN, admin_token=ADMIN_TOKEN
        ),
        database_url=url,
    )
    try:
        with Client(url, actor="ui-test-setup") as client:
            for name in ("hello", "broken", ODD_NAME):
                client.run_now(name)
            client.pause("parked", "waiting for the vendor <script>alert(2)</script>")
            _wait_for_runs(client, ["hello", "broken", ODD_NAME])
        for server in (reader, admin):
            server.start()
            server.refresh_now()
        with headless_chromium() as driver:
            yield World(url=url, reader=reader, admin=admin, scheduler=scheduler, driver=driver)
    finally:
        reader.stop()
        admin.stop()
        scheduler.stop(drain=False, timeout=10)


def get_json(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return json.loads(r.read())


def api_badges(server: ExporterServer, token: str | None = None) -> dict[str, str]:
    document = get_json(server.url + "/api/v1/status", token)
    return {t["name"]: t["badge"] for t in document["tasks"]}


def table_rows(driver: Any) -> list[tuple[str, str]]:
    """(task name, badge) of each row of the tasks table, as the browser shows them."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#tasks tbody tr')).map(r => ["
        "r.querySelector('td.name a').textContent, r.querySelector('.badge').textContent])"
    )
    return [(name, badge) for name, badge in rows]


def open_page(world: World, path: str, server: ExporterServer | None = None) -> None:
    world.driver.get((server or world.reader).url + path)
    wait_for(world.driver, lambda d: d.execute_script("return document.readyState") == "complete")


# ------------------------------------------------------------------------- read-only page
def test_every_task_has_the_badge_that_api_v1_status_gives(world: World) -> None:
    """Every task of the JSON API is in the table (over both pages) with the same badge, and
    the failing task sorts before the fine ones."""
    world.reader.refresh_now()
    expected = api_badges(world.reader)
    open_page(world, "/")
    shown: list[tuple[str, str]] = table_rows(world.driver)
    assert world.driver.find_element("css selector", ".pager span").text.startswith("page 1 of 2")
    world.driver.find_element("id", "page-next").click()
    wait_for(world.driver, lambda d: "page=2" in d.current_url)
    shown += table_rows(world.driver)
    assert dict(shown) == expected
    assert len(shown) == len(expected) == FILLERS + 5
    assert expected["broken"] == "failing"
    assert expected["parked"] == "paused" and expected["switched-off"] == "disabled"
    assert shown[0] == ("broken", "failing")  # failing (and stuck) first
    assert shown[-1] == ("switched-off", "disabled")


def test_the_filter_by_name_and_by_badge(world: World) -> None:
    driver = world.driver
    open_page(world, "/")
    box = driver.find_element("id", "filter-name")
    box.send_keys("filler-01\n")
    wait_for(driver, lambda d: "q=filler-01" in d.current_url)
    wait_for(driver, lambda d: len(table_rows(d)) == 10)
    assert [name for name, _ in table_rows(driver)] == [f"filler-{i:03d}" for i in range(10, 20)]

    box.clear()
    box.send_keys("\n")
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "filter-badge")).select_by_value("failing")
    wait_for(driver, lambda d: "badge=failing" in d.current_url and "q=" not in d.current_url)
    wait_for(driver, lambda d: table_rows(d) == [("broken", "failing")])

    box.send_keys("filler\n")  # no filler task fails
    wait_for(driver, lambda d: d.find_elements("id", "no-match"))
    assert table_rows(driver) == []
    # A reload of the URL gives the same filter: it lives in the URL.
    driver.refresh()
    wait_for(driver, lambda d: d.find_elements("id", "no-match"))
    assert driver.find_element("id", "filter-name").get_attribute("value") == "filler"


def test_clicking_through_reaches_a_runs_output(world: World) -> None:
    driver = world.driver
    open_page(world, "/?q=hello")
    driver.find_element("link text", "hello").click()
    wait_for(driver, lambda d: d.find_elements("id", "runs"))
    assert driver.find_element("id", "task-name").text == "hello"
    driver.find_element("css selector", "#runs tbody tr a").click()
    output = wait_for(driver, lambda d: d.find_elements("id", "run-output"))[0]
    assert OUTPUT_LINE in output.text
    assert driver.find_element("id", "run-status").text == "success"
    assert driver.execute_script("return window.__schedctlOutputXss") is None

    # A name with a slash, markup and quotes reaches its page too, shown as text.
    open_page(world, "/?q=etl")
    link = driver.find_element("css selector", "#tasks td.name a")
    assert link.text == ODD_NAME
    assert driver.find_elements("css selector", "#tasks td.name b") == []
    link.click()
    wait_for(driver, lambda d: d.find_elements("id", "task-name"))
    assert driver.find_element("id", "task-name").text == ODD_NAME
    driver.find_element("css selector", "#runs tbody tr a").click()
    wait_for(driver, lambda d: d.find_elements("id", "run-fields"))
    assert driver.find_element("id", "run-task").text == ODD_NAME


def test_a_refresh_keeps_the_filter_the_page_and_the_scroll_position(world: World) -> None:
    """The page refreshes itself (new data shows) and keeps the URL's filter and page, the
    filter box and where the visitor had scrolled to."""
    driver = world.driver
    open_page(world, "/?q=filler&page=2")
    assert driver.find_element("css selector", ".pager span").text.startswith("page 2 of 2")
    assert len(table_rows(driver)) == FILLERS - 100
    driver.execute_script("window.scrollTo(0, 700)")
    wait_for(driver, lambda d: d.execute_script("return window.scrollY") == 700)
    with world.client() as client:
        client.pause("filler-130", "refresh test")
    # The exporter reads the change within a second; the page fetches itself every 5 s.
    wait_for(
        driver,
        lambda d: ("filler-130", "paused") in table_rows(d),
        timeout=15,
    )
    assert int(driver.find_element("tag name", "body").get_attribute("data-refreshes")) >= 1
    assert driver.current_url.endswith("/?q=filler&page=2")
    assert driver.find_element("id", "filter-name").get_attribute("value") == "filler"
    assert driver.find_element("css selector", ".pager span").text.startswith("page 2 of 2")
    assert driver.execute_script("return window.scrollY") == 700
    with world.client() as client:
        client.resume("filler-130")
    for server in (world.reader, world.admin):  # the next tests see it resumed
        server.refresh_now()


def test_markup_in_an_error_message_is_text_and_runs_no_script(world: World) -> None:
    driver = world.driver
    for path, selector in (
        ("/?badge=failing", "#tasks .error-preview"),
        ("/ui/tasks/broken", "#last-error"),
    ):
        open_page(world, path)
        shown = driver.find_element("css selector", selector)
        assert XSS_ALERT in shown.text and XSS_FLAG in shown.text
        assert shown.find_elements("tag name", "img") == []
    driver.find_element("css selector", "#runs tbody tr a").click()
    error = wait_for(driver, lambda d: d.find_elements("id", "run-error"))[0]
    assert XSS_ALERT in error.text
    assert error.find_elements("tag name", "img") == []
    # No handler ran: the flag stays unset and no alert() opened.
    assert driver.execute_script("return window.__schedctlXss") is None
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        _ = driver.switch_to.alert.text
    # The pause reason (markup too) is text on the tasks page.
    open_page(world, "/?q=parked")
    reason = driver.find_element("css selector", "#tasks td.reason")
    assert reason.text == "waiting for the vendor <script>alert(2)</script>"


def test_screenshots_of_the_tasks_page_and_a_task_page(world: World, tmp_path: Path) -> None:
    driver = world.driver
    target = screenshot_dir(tmp_path)
    driver.set_window_size(1400, 1000)
    try:
        open_page(world, "/")
        assert driver.find_element("css selector", "header nav").text.count("Grafana") == 2
        tasks_png = target / "status-page.png"
        assert driver.save_screenshot(str(tasks_png))
        open_page(world, "/ui/tasks/broken")
        task_png = target / "status-task-page.png"
        assert driver.save_screenshot(str(task_png))
    finally:
        driver.set_window_size(1400, 900)
    for png in (tasks_png, task_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_the_read_only_page_offers_no_action(world: World) -> None:
    driver = world.driver
    open_page(world, "/ui/tasks/hello")
    assert driver.find_elements("id", "action-pause") == []
    assert driver.find_elements("id", "sign-in-link") == []  # nothing to sign in to
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(world.reader.url + "/ui/confirm/pause?task=hello", timeout=10)
    assert refused.value.code == 404


# ------------------------------------------------------------------------- signed in
def sign_in(world: World, token: str, who: str, then: str = "/") -> None:
    driver = world.driver
    driver.delete_all_cookies()
    open_page(world, then, world.admin)
    wait_for(driver, lambda d: "/ui/sign-in" in d.current_url)
    driver.find_element("id", "sign-in-token").send_keys(token)
    driver.find_element("id", "sign-in-who").send_keys(who)
    driver.find_element("id", "sign-in-submit").click()
    wait_for(driver, lambda d: "/ui/sign-in" not in d.current_url)


def audit_events(world: World, task: str) -> list[dict[str, Any]]:
    """``schedctl audit --task TASK --json``, run as a user would."""
    out = subprocess.run(
        [sys.executable, "-m", "scheduler_core.cli", "audit", "--database-url", world.url,
         "--task", task, "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    events: list[dict[str, Any]] = json.loads(out.stdout)
    return events


def test_the_read_token_signs_in_read_only(world: World) -> None:
    driver = world.driver
    sign_in(world, READ_TOKEN, "reader", then="/ui/tasks/hello")
    assert driver.find_element("id", "task-name").text == "hello"
    assert driver.find_elements("id", "action-pause") == []
    assert "signed in as reader (read)" in driver.find_element("css selector", ".account").text
    open_page(world, "/ui/confirm/pause?task=hello", world.admin)
    assert "/ui/sign-in" in driver.current_url  # acting needs the admin token


def test_an_admin_pauses_with_a_reason_and_the_audit_names_them(world: World) -> None:
    driver = world.driver
    sign_in(world, ADMIN_TOKEN, "alice", then="/ui/tasks/hello")
    assert "signed in as alice (admin)" in driver.find_element("css selector", ".account").text
    session = driver.get_cookie("schedctl_session")
    assert session["httpOnly"] is True and session["sameSite"] == "Strict"
    assert ADMIN_TOKEN not in driver.current_url and session["value"] not in driver.page_source
    driver.find_element("id", "action-pause").click()
    wait_for(driver, lambda d: d.find_elements("id", "confirm-form"))
    reason = "disk swap <tonight> & more"
    driver.find_element("id", "action-reason").send_keys(reason)
    driver.find_element("id", "confirm-submit").click()
    wait_for(driver, lambda d: d.find_elements("css selector", ".flash"))
    assert driver.find_element("css selector", ".flash").text == f"Paused hello: {reason}"
    assert driver.find_element("css selector", "#task-live .badge").text == "paused"
    assert api_badges(world.admin, READ_TOKEN)["hello"] == "paused"

    newest = audit_events(world, "hello")[0]
    assert newest["action"] == "pause"
    assert newest["actor"] == "ui:alice@127.0.0.1"
    assert newest["reason"] == reason


def test_a_post_without_the_csrf_token_is_refused(world: World) -> None:
    driver = world.driver
    sign_in(world, ADMIN_TOKEN, "mallory", then="/ui/confirm/pause?task=filler-000")
    wait_for(driver, lambda d: d.find_elements("id", "confirm-form"))
    before = audit_events(world, "filler-000")
    driver.execute_script("document.querySelector('#confirm-form input[name=csrf]').remove()")
    driver.find_element("id", "action-reason").send_keys("no token")
    driver.find_element("id", "confirm-submit").click()
    message = wait_for(driver, lambda d: d.find_elements("id", "message"))[0]
    assert "CSRF token" in message.text
    assert api_badges(world.admin, READ_TOKEN)["filler-000"] == "ok"
    assert audit_events(world, "filler-000") == before


def test_signing_out_ends_the_session(world: World) -> None:
    driver = world.driver
    sign_in(world, ADMIN_TOKEN, "bob", then="/ui/tasks/hello")
    old = driver.get_cookie("schedctl_session")["value"]
    driver.find_element("css selector", "#sign-out button").click()
    wait_for(driver, lambda d: "/ui/sign-in" in d.current_url)  # / needs the read token
    # The old id is refused by the server, not just forgotten by the browser.
    driver.add_cookie({"name": "schedctl_session", "value": old, "path": "/"})
    open_page(world, "/ui/confirm/resume?task=hello", world.admin)
    assert "/ui/sign-in" in driver.current_url
    request = urllib.request.Request(
        world.admin.url + "/ui/tasks/hello", headers={"Cookie": f"schedctl_session={old}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # follows the redirect
        assert response.url.startswith(world.admin.url + "/ui/sign-in")
