"""Never more than asked (issue 26): the plan before spending (`generate --dry-run`), prices as
configuration and `--max-cost`, the `cost` in a run's JSON, and the caps in every mode that
buys, each proved by counting what the loopback image API was asked for."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider
from imgsave.adapters.imageapi.kinds import FACTS
from imgsave.core import cost
from imgsave.core.cost import BATCH, SYNC, Pricing
from imgsave.core.settings import load_settings
from imgsave.errors import UsageError

from .test_many_projects import put_projects

# -- the arithmetic ----------------------------------------------------------------------------

amounts = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("100000"), places=4)
prices = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("50"), places=4)
factors = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1"), places=2)


@given(max_cost=amounts, price=prices, factor=factors, batch=st.booleans())
def test_a_cost_cap_never_lets_the_cost_exceed_it_and_never_leaves_an_image_it_allows(
    max_cost: Decimal, price: Decimal, factor: Decimal, batch: bool
) -> None:
    pricing = Pricing(price, factor, "USD")
    mode = BATCH if batch else SYNC
    n = cost.cap(None, max_cost, pricing, mode).images
    assert n is not None
    estimate = pricing.estimate(n, mode)
    more = pricing.estimate(n + 1, mode)
    assert estimate is not None and more is not None
    assert estimate <= max_cost < more, "rounded down, and only down"


@given(max_images=st.integers(1, 10_000), max_cost=amounts, price=prices)
def test_with_both_caps_the_smaller_wins_and_names_itself(
    max_images: int, max_cost: Decimal, price: Decimal
) -> None:
    pricing = Pricing(price)
    by_cost = cost.images_within(max_cost, price)
    assert by_cost is not None
    capped = cost.cap(max_images, max_cost, pricing, SYNC)
    assert capped.images == min(max_images, by_cost)
    flag = "--max-cost" if by_cost < max_images else "--max-images"
    assert capped.label.startswith(flag)


@given(st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("1e9"), places=4))
def test_a_price_written_in_the_settings_file_is_the_decimal_written(price: Decimal) -> None:
    """TOML gives the float nearest 0.04; the price is 0.04 again, not 0.0400000000000000008."""
    written = str(price)
    assert cost.decimal_of(float(written)) == Decimal(written)


def test_decimal_quotients_that_round_up_to_a_whole_number_are_not_trusted() -> None:
    # Decimal's 28 digits would make this quotient 1; one image costs more than the cap.
    cap, unit = Decimal("0.99999999999999999999999999999"), Decimal(1)
    assert cost.images_within(cap, unit) == 0


def test_without_a_price_there_is_no_estimate_and_max_cost_is_refused() -> None:
    pricing = Pricing(None)
    assert pricing.cost_json(10, SYNC) == {"estimated": None, "currency": "USD"}
    with pytest.raises(UsageError, match=r"--max-cost needs a price: set \[provider\] price"):
        cost.cap(None, Decimal(5), pricing, SYNC)
    assert cost.cap(7, None, pricing, SYNC) == cost.Cap(7, "--max-images 7")
    assert cost.cap(None, None, pricing, BATCH).images is None


@pytest.mark.parametrize(
    "text",
    ["0", "-1", "nan", "inf", "$5", "", "five", "1e999999999", "1e-999999999", "0.0000000000001"],
)
def test_a_max_cost_that_is_no_positive_amount_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--max-cost must be a positive amount"):
        cost.parse_amount(text)


def test_amounts_read_as_money() -> None:
    assert [cost.money(Decimal(t)) for t in ("12.5", "0.0055", "4E+1", "0", "3.000")] == [
        "12.50", "0.0055", "40.00", "0.00", "3.00",
    ]  # fmt: skip
    assert Pricing(Decimal("0.04")).cost_json(3, BATCH) == {"estimated": 0.06, "currency": "USD"}


# -- the settings ------------------------------------------------------------------------------


def _settings_from(tmp_path: Path, provider: str):
    path = tmp_path / "imgsave.toml"
    path.write_text("[provider]\n" + provider)
    return load_settings({}, config_path=path, environ={}, kinds=FACTS).provider


def test_prices_are_configuration_with_documented_defaults(tmp_path: Path) -> None:
    default = _settings_from(tmp_path, "")
    assert (default.price, default.batch_discount, default.currency) == (None, 0.5, "USD")
    set_ = _settings_from(tmp_path, 'price = 0.04\nbatch_discount = 0.6\ncurrency = "EUR"\n')
    assert (set_.price, set_.batch_discount, set_.currency) == (0.04, 0.6, "EUR")
    assert _settings_from(tmp_path, "price = 1\n").price == 1.0


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("price = 0", "must be a positive number"),
        ("price = -0.04", "must be a positive number"),
        ('price = "0.04"', "must be a positive number"),
        ("price = nan", "must be a positive number"),
        ("price = inf", "must be a positive number"),
        ("price = true", "must be a positive number"),
        ("batch_discount = 1.5", "at most 1"),
        ("batch_discount = 0", "must be a positive number"),
        ('currency = ""', "must be a non-empty string"),
    ],
)
def test_a_price_that_is_no_price_is_a_usage_error(tmp_path: Path, line: str, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        _settings_from(tmp_path, line + "\n")


def test_config_shows_the_prices_and_where_they_came_from(cli, tmp_path: Path) -> None:
    own = tmp_path / "priced.toml"
    own.write_text('[provider]\nprice = 0.04\ncurrency = "EUR"\n')
    out = cli("config", "--json", "--config", str(own)).json()["settings"]
    assert out["provider.price"] == {"value": 0.04, "source": f"file {own}"}
    assert out["provider.currency"]["value"] == "EUR"
    assert out["provider.batch_discount"] == {"value": 0.5, "source": "default"}


# -- the plan before spending ------------------------------------------------------------------


def priced(tmp_path: Path, price: str = "0.04", extra: str = "") -> dict[str, str]:
    """A settings file with a price; its path as IMGSAVE_CONFIG."""
    path = tmp_path / "priced.toml"
    path.write_text(
        "allow_private_network = true\n"
        f"[provider]\nprice = {price}\nbackoff_initial = 0.01\nbackoff_max = 0.05\n"
        f"poll_interval = 0.02\n{extra}"
    )
    return {"IMGSAVE_CONFIG": str(path)}


def imgsave_tables(db_url: str) -> list[str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname NOT IN "
            "('pg_catalog', 'information_schema') ORDER BY 1"
        ).fetchall()
    return [name for (name,) in rows]


def test_a_dry_run_prints_the_plan_and_spends_claims_and_writes_nothing(
    cli, rows, db_url, tmp_path: Path, log_dir: Path
) -> None:
    document = incident_document(5)
    document["scenes"][0]["imageUrls"] = ["https://img.test/1.png"]
    del document["scenes"][4]["imagePrompt"]
    rows.put("p1", document)
    before = rows.text("p1")
    store = tmp_path / "store-never-probed"
    metrics = tmp_path / "metrics.prom"
    with LoopbackProvider() as api:
        env = {
            "IMGSAVE_BASE_URL": api.base_url,
            "IMGSAVE_API_KEY": "sk-test-SECRET-123",
            "IMGSAVE_STORE": f"file://{store}",
            "IMGSAVE_PUBLIC_URL": "https://images.example.com",
            **priced(tmp_path),
        }
        ran = cli("generate", "p1", "-k", "2", "--dry-run", "--json",
                  "--metrics-file", str(metrics), env=env)  # fmt: skip
        assert ran.code == 0, ran.stderr
        assert (api.requests, api.batches.created) == (0, 0)
    out = ran.json()
    assert out == {
        "dry_run": True,
        "mode": "sync",
        "projects": [
            {"project": "p1", "scenes_short": [1, 2, 3, 4], "images": 7, "capped": 0,
             "skipped_scenes": [], "unprompted_scenes": [5], "pending_scenes": []},
        ],
        "plan": {"images": 7, "projects": 1, "mode": "sync", "estimated_cost": 0.28,
                 "currency": "USD", "unit_price": 0.04},
        "capped": 0,
        "cap": None,
        "unplanned": 0,
    }  # fmt: skip
    # Nothing written: no table (not even imgsave's own), no log, no store probe, no metrics.
    assert imgsave_tables(db_url) == ["projects"]
    assert rows.text("p1") == before
    assert not log_dir.exists() and not store.exists() and not metrics.exists()


def test_the_plan_leaves_out_what_the_ledger_says_is_on_its_way(
    cli, rows, db_url, tmp_path: Path
) -> None:
    rows.put("p1", incident_document(4))
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        env = {
            "IMGSAVE_BASE_URL": api.base_url,
            "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
            "IMGSAVE_PUBLIC_URL": "https://images.example.com",
            **priced(tmp_path),
        }
        submitted = cli("generate", "p1", "--batch", "--scenes", "1-3", "--json", env=env)
        assert submitted.json()["in_batches"] == 3, submitted.stdout
        tables = imgsave_tables(db_url)
        plan = cli("generate", "p1", "-k", "2", "--batch", "--dry-run", "--json", env=env)
        assert plan.code == 0, plan.stderr
        assert api.batches.created == 1, "the dry run submitted nothing"
        # The run itself then buys what the dry run said it would.
        real = cli("generate", "p1", "-k", "2", "--batch", "--json", env=env).json()
    (p1,) = plan.json()["projects"]
    assert (p1["scenes_short"], p1["images"], p1["pending_scenes"]) == ([1, 2, 3, 4], 5, [])
    assert plan.json()["plan"] == {
        "images": 5,
        "projects": 1,
        "mode": "batch",
        "estimated_cost": 0.1,
        "currency": "USD",
        "unit_price": 0.02,
    }
    assert imgsave_tables(db_url) == tables, "the dry run made no table"
    assert real["in_batches"] == 5 and real["cost"] == {"estimated": 0.1, "currency": "USD"}
    # With every image on its way, the plan buys nothing.
    again = cli("generate", "p1", "-k", "2", "--dry-run", "--json", env=env).json()
    assert again["projects"][0]["pending_scenes"] == [1, 2, 3, 4]
    assert again["plan"]["images"] == 0 and again["plan"]["estimated_cost"] == 0.0


def test_a_dry_run_over_several_projects_names_the_one_it_cannot_plan(cli, rows) -> None:
    rows.put("a", incident_document(2))
    rows.put("b", "not json at all", raw=False)
    ran = cli("generate", "a", "b", "nope", "--dry-run", "--json")
    assert ran.code == 3, ran.stdout
    out = ran.json()
    assert [p["project"] for p in out["projects"]] == ["a", "b", "nope"]
    assert out["projects"][0]["images"] == 2
    assert "not found" in out["projects"][2]["error"]
    assert out["plan"]["images"] == 2 and out["plan"]["estimated_cost"] is None
    assert out["unplanned"] == 2
    # One project named and not found: the usual error, exit 3.
    one = cli("generate", "nope", "--dry-run", "--json")
    assert one.code == 3 and one.json() == {"error": "project nope not found", "exit_code": 3}


def test_a_dry_run_tells_people_the_plan_and_its_price(cli, rows, tmp_path: Path) -> None:
    rows.put("a", incident_document(3))
    rows.put("b", incident_document(1))
    ran = cli("generate", "a", "b", "--max-cost", "0.10", "--dry-run", env=priced(tmp_path))
    assert ran.code == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "a: 2 images for 2 scenes, 1 beyond the cap",
        "b: nothing to buy, 1 beyond the cap",
        "plan (dry run, nothing bought): 2 images for 1 project synchronously, estimated "
        "0.08 USD; 2 more beyond --max-cost 0.10 USD (2 images at 0.04 USD)",
    ]
    unpriced = cli("generate", "a", "--dry-run", "--batch")
    assert unpriced.stdout.splitlines()[-1] == (
        "plan (dry run, nothing bought): 3 images for 1 project through the Batch API, "
        "no estimate (set [provider] price)"
    )


def test_a_dry_run_of_all_projects_streams_them_a_batch_at_a_time(
    cli, db_url, tmp_path: Path
) -> None:
    """`--all` over 1,201 projects: one valid JSON object, every project in it, planned from
    three reads of 500 documents, never all of them at once."""
    names = put_projects(db_url, 1201, 2)
    ran = cli("generate", "--all", "--max-images", "1000", "--dry-run", "--json",
              env=priced(tmp_path, "0.5"))  # fmt: skip
    assert ran.code == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert [p["project"] for p in out["projects"]] == names
    assert out["plan"] == {
        "images": 1000,
        "projects": 500,
        "mode": "sync",
        "estimated_cost": 500.0,
        "currency": "USD",
        "unit_price": 0.5,
    }
    assert out["capped"] == 1402 and out["cap"] == "--max-images 1000"


async def test_the_first_projects_are_printed_before_the_next_batch_is_read(
    settings, db_url, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from imgsave.adapters.postgres.database import Database
    from imgsave.commands.generate import Wanted, run_dry
    from imgsave.operations.planning import Ask
    from imgsave.terminal.generate_view import PlanOutput

    put_projects(db_url, 1100, 1)
    reads: list[int] = []
    printed_at_read: list[int] = []
    output = PlanOutput(as_json=True, quiet=False)
    real_read_many = Database.read_many

    async def counted(self: Database, projects: list[str]) -> object:
        printed_at_read.append(capsys.readouterr().out.count('"project"'))
        reads.append(len(projects))
        return await real_read_many(self, projects)

    monkeypatch.setattr(Database, "read_many", counted)
    result = await run_dry(settings, Wanted((), Ask(1), all_projects=True), output=output)
    assert reads == [500, 500, 100]
    assert printed_at_read == [0, 500, 500], "each batch printed before the next is read"
    assert result.images == 1100


def test_a_stream_cut_short_by_an_error_is_still_one_json_object(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from imgsave.operations.generating import ProjectPlan
    from imgsave.terminal.generate_view import PlanOutput

    output = PlanOutput(as_json=True, quiet=False)
    output.open({"dry_run": True, "mode": "sync"})
    output.project(ProjectPlan("a", images=1, scenes_short=(1,)))
    output.project(ProjectPlan("b\x1b[2J", error="project b: document is null"))
    output.close_json({"error": "database unreachable", "exit_code": 3})
    text = capsys.readouterr().out
    assert "\x1b" not in text
    out = json.loads(text)
    assert [p["project"] for p in out["projects"]] == ["a", "b\x1b[2J"]
    assert (out["error"], out["exit_code"]) == ("database unreachable", 3)


def test_max_cost_without_a_price_is_a_usage_error_in_every_mode(cli, rows) -> None:
    rows.put("p1", incident_document(1))
    for extra in ([], ["--batch"], ["--dry-run"]):
        ran = cli("generate", "p1", "--max-cost", "5", *extra, "--json")
        assert ran.code == 2, (extra, ran.stdout)
        assert "--max-cost needs a price" in ran.json()["error"]
    bad = cli("generate", "p1", "--max-cost", "lots", "--json")
    assert bad.code == 2 and "--max-cost must be a positive amount" in bad.json()["error"]


def test_a_dry_run_with_batch_refuses_a_kind_without_a_batch_api(cli, rows) -> None:
    rows.put("p1", incident_document(1))
    ran = cli("generate", "p1", "--batch", "--dry-run", env={"IMGSAVE_PROVIDER": "replicate"})
    assert ran.code == 2 and "has no Batch API" in ran.stderr


# -- caps in every mode, counted at the provider ----------------------------------------------


def provider(api: LoopbackProvider) -> dict[str, str]:
    return {"IMGSAVE_BASE_URL": api.base_url, "IMGSAVE_API_KEY": "sk-test-SECRET-123"}


def test_max_images_caps_one_project_at_n_requests(cli, rows, api) -> None:
    rows.put("p1", incident_document(5))
    ran = cli("generate", "p1", "--max-images", "2", "--json", env=provider(api))
    assert ran.code == 1 and api.requests == 2
    assert ran.json()["not_requested"] == 3


@pytest.mark.parametrize("kind", ["replicate", "fal", "bfl"])
def test_max_cost_caps_a_job_api_at_the_jobs_it_submits(cli, rows, tmp_path: Path, kind) -> None:
    from .test_provider_jobs import env_for

    rows.put("p1", incident_document(4))
    with LoopbackProvider(kind=kind, job_polls=1) as api:
        assert api.jobs is not None
        env = {**env_for(api, tmp_path), **priced(tmp_path, "0.03")}
        ran = cli("generate", "p1", "--max-cost", "0.10", "--json", "--allow-http", env=env)
        assert api.jobs.submitted == 3, ran.stdout + ran.stderr
    out = ran.json()
    assert (ran.code, out["saved"], out["not_requested"]) == (1, 3, 1)
    assert out["cost"] == {"estimated": pytest.approx(0.09), "currency": "USD"}


def test_max_cost_caps_a_synchronous_run_at_what_it_buys_and_says_what_it_cost(
    cli, db_url, tmp_path: Path
) -> None:
    put_projects(db_url, 3, 4)
    with LoopbackProvider() as api:
        env = {**provider(api), **priced(tmp_path)}
        ran = cli("generate", "--all", "--max-cost", "0.30", "--max-images", "9", "--json",
                  env=env)  # fmt: skip
        assert ran.code == 1, ran.stderr
        assert api.requests == 7, "0.30 buys 7 images at 0.04, fewer than --max-images 9"
    out = ran.json()
    assert out["saved"] == 7 and out["cost"] == {"estimated": 0.28, "currency": "USD"}
    assert sum(p["cost"]["estimated"] for p in out["projects"]) == pytest.approx(0.28)
    assert "--max-cost 0.30 USD (7 images at 0.04 USD) reached; not requested" in ran.stderr


def test_every_synchronous_run_says_what_it_bought_priced_or_not(cli, rows, tmp_path: Path):
    rows.put("p1", incident_document(2))
    with LoopbackProvider() as api:
        unpriced = cli("generate", "p1", "--json", env=provider(api)).json()
        assert unpriced["cost"] == {"estimated": None, "currency": "USD"}
        in_euros = {**provider(api), **priced(tmp_path, extra='currency = "EUR"\n')}
        priced_run = cli("generate", "p1", "-k", "2", "--json", env=in_euros)
        assert priced_run.json()["cost"] == {"estimated": 0.08, "currency": "EUR"}
        rows.put("p1", incident_document(2))
        env = {**provider(api), **priced(tmp_path)}
        said = cli("generate", "p1", env=env)
        assert "2 of 2 images saved" in said.stdout and "estimated 0.08 USD" in said.stdout
        nothing = cli("generate", "p1", "--json", env=env)
        assert nothing.json()["cost"] == {"estimated": 0.0, "currency": "USD"}


def batch_host(api: LoopbackProvider, tmp_path: Path) -> dict[str, str]:
    return {
        "IMGSAVE_BASE_URL": api.base_url,
        "IMGSAVE_API_KEY": "sk-test-SECRET-123",
        "IMGSAVE_STORE": f"file://{tmp_path / 'store'}",
        "IMGSAVE_PUBLIC_URL": "https://images.example.com",
    }


def images_submitted(api: LoopbackProvider) -> int:
    """Request lines in the input file of every batch the provider created."""
    emulation = api.batches
    return sum(
        len(emulation.contents[batch["input_file_id"]].splitlines())
        for batch in emulation.batches.values()
    )


@pytest.mark.parametrize(
    ("flags", "submitted"),
    [(["--max-images", "4"], 4), (["--max-cost", "0.10"], 5), (["--max-cost", "0.10",
     "--max-images", "3"], 3)],
)  # fmt: skip
def test_batch_caps_the_images_it_submits(
    cli, db_url, tmp_path: Path, flags: list[str], submitted: int
) -> None:
    put_projects(db_url, 2, 5)
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        env = {**batch_host(api, tmp_path), **priced(tmp_path)}
        ran = cli("generate", "--all", "--batch", "--batch-size", "3", *flags, "--json", env=env)
        assert ran.code == 1, ran.stdout
        assert images_submitted(api) == submitted and api.requests == 0
    out = ran.json()
    assert (out["in_batches"], out["capped"]) == (submitted, 10 - submitted)
    assert out["cost"] == {"estimated": pytest.approx(submitted * 0.02), "currency": "USD"}


def _dead_links(api: LoopbackProvider, count: int) -> list[str]:
    api.dead_paths.update(f"/img/00009{n}.png" for n in range(count))
    return [f"{api.origin}/img/00009{n}.png" for n in range(count)]


@pytest.mark.parametrize("flags", [["--max-images", "2"], ["--max-cost", "0.09"]])
def test_rehost_regenerate_buys_at_most_its_cap(cli, rows, tmp_path: Path, flags) -> None:
    with LoopbackProvider(answer="b64") as api:
        document = incident_document(4)
        for scene, url in zip(document["scenes"], _dead_links(api, 4), strict=True):
            scene["imageUrls"] = [url]
        rows.put("p1", document)
        env = {**batch_host(api, tmp_path), **priced(tmp_path)}
        ran = cli("rehost", "p1", "--execute", "--regenerate", *flags, "--json", "--allow-http",
                  env=env)  # fmt: skip
        assert api.requests == 2, ran.stdout + ran.stderr
    out = ran.json()
    assert (out["regenerated"], out["remaining"], ran.code) == (2, 2, 1)
    assert out["cost"] == {"estimated": 0.08, "currency": "USD"}


@pytest.mark.parametrize("flags", [["--max-images", "1"], ["--max-cost", "0.05"]])
def test_repair_regenerate_buys_at_most_its_cap(
    cli, rows, tmp_path: Path, log_dir: Path, flags
) -> None:
    with LoopbackProvider() as api:
        rows.put("p1", incident_document(3))  # the app's log says it saved a link in each
        env = {"IMGSAVE_BASE_URL": api.base_url, "IMGSAVE_API_KEY": "sk-test-SECRET-123",
               **priced(tmp_path)}  # fmt: skip
        ran = cli("repair", "--execute", "--regenerate", "--check-urls", *flags, "--json",
                  "--allow-http", "--log", str(_log_of(log_dir, api, 3)), env=env)  # fmt: skip
        assert api.requests == 1, ran.stdout + ran.stderr
    out = ran.json()
    assert (out["regenerated"], ran.code) == (1, 1), ran.stdout
    assert out["cost"] == {"estimated": 0.04, "currency": "USD"}


def _log_of(log_dir: Path, api: LoopbackProvider, count: int) -> Path:
    """A log naming a dead link as saved in each scene (what audit reads with --log)."""
    from .test_audit_repair import own_line

    path = log_dir.parent / "app.jsonl"
    when = "2026-11-20T10:00:00.000Z"
    lines = [own_line("r", when, "p1", n + 1, url) for n, url in enumerate(_dead_links(api, count))]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("flag", [["--rate", "60/min"], ["--concurrency", "4"], ["-c", "4"]])
def test_rate_and_concurrency_are_refused_with_batch_in_one_line(cli, rows, tmp_path, flag):
    rows.put("p1", incident_document(1))
    with LoopbackProvider(answer="b64") as api:
        for how in (["--batch"], []):
            env = batch_host(api, tmp_path)
            if not how:  # batch from the settings file instead of the flag
                env |= priced(tmp_path, extra="batch = true\n")
            ran = cli("generate", "p1", *how, *flag, "--json", env=env)
            assert ran.code == 2, ran.stdout
            assert ran.stderr.count("\n") == 1 and "does not apply to --batch" in ran.stderr
        assert (api.requests, api.batches.created) == (0, 0)


def test_strict_means_the_same_in_both_modes(cli, rows, tmp_path: Path) -> None:
    document = incident_document(2)
    del document["scenes"][1]["imagePrompt"]
    with LoopbackProvider(answer="b64", batch_seconds=3600) as api:
        env = batch_host(api, tmp_path)
        for mode in ([], ["--batch"]):
            rows.put("p1", document)
            lenient = cli("generate", "p1", *mode, "--json", env=env)
            assert lenient.code == 0, (mode, lenient.stdout)
            rows.put("p1", document)
            strict = cli("generate", "p1", *mode, "--strict", "--json", env=env)
            assert strict.code == 1, (mode, strict.stdout)
            assert strict.json()["unprompted_scenes"] in ([2], 1)


def test_a_dry_run_prints_a_projects_key_as_text_never_as_terminal_commands(cli, rows) -> None:
    rows.put("a\x1b[2J[b]", incident_document(1))
    rows.put("c", incident_document(1))
    ran = cli("generate", "--all", "--dry-run")
    assert ran.code == 0, ran.stderr
    assert "\x1b" not in ran.stdout
    assert ran.stdout.splitlines()[0] == "a\\x1b[2J[b]: 1 image for 1 scene"
