"""Bad input: fuzzed task files, cron strings, time zones, CLI arguments and JSON API queries
never cause a traceback; odd task names and error texts are stored and exported intact."""

from __future__ import annotations

import contextlib
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from scheduler_core.cli import main as schedctl_main
from scheduler_core.config import POLICY_KEYS, TASK_KEYS, parse_task_document
from scheduler_core.db import create_db_engine
from scheduler_core.errors import ConfigError
from scheduler_core.store import Store
from scheduler_core.task_files import load_task_file
from scheduler_core.testing import FakeClock, run_cycle, running_scheduler
from tests.reliability.conftest import NASTY, ODD_NAMES

pytestmark = [pytest.mark.reliability]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(NASTY),
    st.sampled_from(["1s", "5m", "0s", "-1s", "1e309s", "30 2 * * *", "UTC", "Mars/Olympus"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=10) | st.sampled_from(sorted(TASK_KEYS)), inner, max_size=4
        )
    ),
    max_leaves=12,
)
task_mappings = st.dictionaries(
    st.sampled_from(sorted(TASK_KEYS)) | st.text(max_size=12), values, max_size=8
)
documents = st.one_of(
    values,
    st.fixed_dictionaries(
        {"tasks": st.lists(task_mappings, max_size=4)},
        optional={"defaults": st.dictionaries(st.sampled_from(sorted(POLICY_KEYS)), values)},
    ),
)


def assert_names_input(exc: ConfigError, source: str) -> None:
    """A config error names the file and, for each issue, the field."""
    text = str(exc)
    assert exc.issues and source in text
    for issue in exc.issues:
        assert repr(issue.field) in text


@FUZZ
@given(document=documents)
def test_fuzzed_task_documents_are_accepted_or_rejected_with_a_named_field(document) -> None:
    """Any YAML-shaped document either parses or raises ConfigError naming source and field."""
    try:
        parse_task_document(document, source="fuzz.yaml", check_callables=False)
    except ConfigError as exc:
        assert_names_input(exc, "fuzz.yaml")


@FUZZ
@given(text=st.text(max_size=200) | st.sampled_from(["tasks: [", "a: b: c", "\t- x", "{{{"]))
def test_fuzzed_yaml_text_never_escapes_as_a_traceback(tmp_path_factory, text: str) -> None:
    """Arbitrary file contents give definitions or a ConfigError naming the file."""
    path = tmp_path_factory.mktemp("yaml") / "tasks.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_task_file(path, check_callables=False)
    except ConfigError as exc:
        assert_names_input(exc, str(path))


@FUZZ
@given(
    cron=st.text(max_size=40)
    | st.sampled_from(["* * * * *", "61 * * * *", "*/0 * * * *", "0 0 31 2 *", "@hourly"])
    | st.lists(
        st.sampled_from(["*", "0", "59", "*/5", "1-3", "L", "?", "MON", "99", "-1", ","]),
        min_size=1,
        max_size=7,
    ).map(" ".join),
    timezone=st.text(max_size=30)
    | st.sampled_from(["UTC", "Europe/Berlin", "../../etc/passwd", "", "America/New_York "]),
)
def test_fuzzed_cron_strings_and_time_zones_are_named_when_bad(cron: str, timezone: str) -> None:
    """A bad cron expression or time zone is reported against the 'cron' or 'timezone' field."""
    task = {"name": "t", "command": ["true"], "cron": cron, "timezone": timezone}
    try:
        [definition] = parse_task_document({"tasks": [task]}, source="fuzz.yaml")
    except ConfigError as exc:
        assert_names_input(exc, "fuzz.yaml")
        assert {i.field for i in exc.issues} <= {"cron", "timezone"}, exc
        return
    definition.first_fire_after(T0)  # a valid schedule can also be evaluated


# ------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def cli_db(tmp_path_factory) -> Iterator[str]:
    """A migrated SQLite database with one task, for CLI fuzzing."""
    from scheduler_core.db import upgrade_schema

    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'schedctl.db'}"
    engine = create_db_engine(url)
    upgrade_schema(engine)
    Store(engine).sync_tasks(
        parse_task_document(
            {"tasks": [{"name": "known", "command": ["true"], "every": "1h"}]}, source="t"
        ),
        now=T0,
    )
    engine.dispose()
    yield url


def run_cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = schedctl_main(argv)
        except SystemExit as exc:  # argparse: usage errors and --help
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue() + err.getvalue()


words = st.text(max_size=20) | st.sampled_from(NASTY) | st.sampled_from(["-1", "0", "1e9", "--"])
cli_commands = st.one_of(
    st.tuples(st.just(["runs"]), st.lists(
        st.sampled_from(["--task", "--status", "--since", "--instance", "--limit", "--before-id"]),
        max_size=3,
    )),
    st.tuples(st.sampled_from([["pause"], ["resume"], ["run-now"], ["cancel"], ["tasks", "list"]]),
              st.lists(st.sampled_from(["--reason", "--json"]), max_size=2)),
    st.tuples(st.sampled_from([["validate"], ["db", "current"], ["nonsense"], []]), st.just([])),
)  # fmt: skip


@FUZZ
@given(command=cli_commands, args=st.lists(words, max_size=4), data=st.data())
def test_fuzzed_cli_arguments_exit_with_a_message_not_a_traceback(
    cli_db: str, keep_logging, command, args, data
) -> None:
    """Random admin-command arguments end with exit 0, 1 or 2 and a message, never a
    traceback (the scheduler and demo commands are left out: valid input would run them)."""
    head, flags = command
    argv = list(head)
    for flag in flags:
        argv += [flag, data.draw(words)] if flag not in ("--json",) else [flag]
    argv += [a for a in args if a not in ("-h", "--help", "--version")]
    code, output = run_cli([*argv, "--database-url", cli_db])
    assert code in (0, 1, 2), (argv, code, output)
    assert "Traceback" not in output, (argv, output)
    if code != 0:
        assert output.strip(), argv


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "mysql://u:pw@h/db",
        "sqlite:////nonexistent-dir/x.db",
        "postgresql://u:pw@127.0.0.1:1/db",
    ],
)
def test_bad_database_urls_are_named_without_traceback(url: str, keep_logging) -> None:
    """A wrong --database-url exits 1 or 2 with a message that names the problem."""
    code, output = run_cli(["tasks", "list", "--database-url", url])
    assert code in (1, 2) and "Traceback" not in output, output
    assert "database" in output.lower(), output


# ------------------------------------------------------------------ odd names stored intact


def test_odd_task_names_and_error_texts_round_trip_intact(db_engine: sa.Engine) -> None:
    """Task names and error messages with quotes, newlines, unicode and SQL-looking text are
    stored and read back byte for byte, on both backends."""
    clock = FakeClock(T0)
    tasks = [
        {
            "name": name,
            "callable": "tests.reliability.jobs:fail_with",
            "args": [message],
            "every": "1h",
        }
        for name, message in zip(ODD_NAMES, NASTY, strict=True)
    ]
    Store(db_engine).sync_tasks(parse_task_document({"tasks": tasks}, source="t"), now=clock.now())
    clock.advance(3600)
    with running_scheduler(db_engine, clock, instance_id="odd", drain_grace=2) as scheduler:
        assert run_cycle(scheduler) == len(tasks)
    store = Store(db_engine)
    assert {t["name"] for t in store.list_tasks()} == set(ODD_NAMES)
    for name, message in zip(ODD_NAMES, NASTY, strict=True):
        [run] = store.list_runs(task=name)
        assert run["status"] == "failure"
        assert run["error_message"] == f"RuntimeError: {message}"


# ------------------------------------------------------------------ exporter
def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_exporter_escapes_odd_task_names_in_labels(exporter_with_odd_tasks: str) -> None:
    """Odd task names come back intact from a Prometheus parser of /metrics: label values are
    escaped, so no name can inject a sample; error text never becomes a label."""
    status, text = get(f"{exporter_with_odd_tasks}/metrics")
    assert status == 200
    families = list(text_string_to_metric_families(text))
    tasks_seen = {
        s.labels["task"] for f in families if f.name == "scheduler_task_info" for s in f.samples
    }
    assert tasks_seen == set(ODD_NAMES)
    assert not [f.name for f in families if f.name.startswith("fake_metric")]
    for family in families:
        for sample in family.samples:
            for value in sample.labels.values():
                assert "RuntimeError" not in value, (family.name, sample.labels)


query_keys = st.sampled_from(
    ["limit", "before_id", "offset", "status", "since", "instance_id"]
) | st.text(min_size=1, max_size=8)


@FUZZ
@given(
    task=st.sampled_from(ODD_NAMES) | st.text(min_size=1, max_size=20),
    params=st.lists(st.tuples(query_keys, words), max_size=4),
)
def test_fuzzed_json_api_queries_get_json_answers_never_500(
    exporter_with_odd_tasks: str, task: str, params
) -> None:
    """Any task name and query string gets 200, 400 or 404 with a JSON body; a 400 names the
    offending parameter."""
    path = urllib.parse.quote(task, safe="")
    query = urllib.parse.urlencode(params)
    status, body = get(f"{exporter_with_odd_tasks}/api/v1/tasks/{path}/runs?{query}")
    assert status in (200, 400, 404), (task, params, status, body)
    document = json.loads(body)
    if status == 400:
        message = document["error"]["message"]
        assert message.startswith("query parameter "), message
    if status == 200:
        assert document["task"] == task


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param(n, m, id=f"name{i}")
        for i, (n, m) in enumerate(zip(ODD_NAMES, NASTY, strict=True))
    ],
)
def test_odd_names_read_back_intact_from_the_json_api(
    exporter_with_odd_tasks: str, name: str, message: str
) -> None:
    """The JSON API returns an odd task name and its error text exactly as stored."""
    status, body = get(
        f"{exporter_with_odd_tasks}/api/v1/tasks/{urllib.parse.quote(name, safe='')}/runs"
    )
    assert status == 200, (name, body)
    [run] = json.loads(body)["runs"]
    assert run["task"] == name and run["error_message"] == f"RuntimeError: {message}"


def test_config_file_with_odd_names_validates(tmp_path: Path, keep_logging) -> None:
    """`schedctl validate` accepts a file whose task names hold quotes and unicode."""
    path = tmp_path / "tasks.yaml"
    path.write_text(
        yaml.safe_dump(
            {"tasks": [{"name": n, "command": ["true"], "every": "1m"} for n in ODD_NAMES]},
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    code, output = run_cli(["validate", str(path)])
    assert code == 0, output
