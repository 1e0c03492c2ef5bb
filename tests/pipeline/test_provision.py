"""NVFlare provisioning of a consortium, the portable job, and the kits' local configs.

A provisioned system gets a job that names no path of any machine and carries no site data:
every site finds its home through its own startup kit, the server its run through its kit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pharmafl.errors import ConfigError
from pharmafl.models.dti import ModelConfig
from pharmafl.pipeline.cli import main
from pharmafl.pipeline.config import DataConfig, FederationConfig, LedgerConfig, RunConfig, load_run_config
from pharmafl.pipeline.consortium import init_consortium, load_consortium
from pharmafl.pipeline.provision import provision, write_project, write_server_config
from pharmafl.sites.home import SiteHome
from pharmafl.sites.kit import local_config_path, site_of_kit, write_site_config
from pharmafl.sites.tables import load_dataset
from pharmafl.sites.training import TrainConfig

ASSETS = Path(__file__).parents[1] / "sites" / "assets"
FAST = 2**14  # scrypt cost for tests (the default is 2**17)
SITES = ("site-01", "site-02", "site-03")
SETTINGS = dict(
    server_host="localhost", fl_port=18002, admin_port=18003, admin="admin@coordinator.org", project="pharmafl"
)


@pytest.fixture(scope="module")
def consortium(tmp_path_factory) -> dict:
    """Three sites set up at their own homes; the coordinator's consortium of their cards."""
    root, ds = tmp_path_factory.mktemp("homes"), load_dataset(ASSETS)
    homes = [SiteHome.init(root / s, s, ds, passphrase=f"pw-{s}", scrypt_n=FAST) for s in SITES]
    return load_consortium(init_consortium([h.path / "site-card.json" for h in homes], root / "coordinator"))


@pytest.fixture(scope="module")
def kits(consortium, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("nvflare")
    return provision(write_project(consortium, out, **SETTINGS), out / "workspace")


@pytest.fixture(scope="module")
def exported(small_davis, tmp_path_factory):
    """A prepared run (3 simulated sites) and its job for a provisioned system."""
    from pharmafl.pipeline.engines import export_federated
    from pharmafl.pipeline.run import RunPlan

    cfg = RunConfig(
        name="small",
        seed=7,
        data=DataConfig(dataset=str(small_davis), sites=3, partition="iid"),
        model=ModelConfig(max_len=64, embed_dim=16, kernel_size=4, latent_dim=32),
        train=TrainConfig(batch_size=64),
        federation=FederationConfig(rounds=1),
        ledger=LedgerConfig(enabled=False),
    )
    root = tmp_path_factory.mktemp("coordinator")
    job = export_federated(cfg, root / "runs" / "run", root / "job")
    return SimpleNamespace(run=root / "runs" / "run", job=job, plan=RunPlan.load(root / "runs" / "run" / "plan.json"))


def test_project_yml_names_server_sites_parties_and_admin(consortium, tmp_path):
    parties = {"helper-1": {"role": "helper"}, "server": {"role": "server"}}
    path = write_project({**consortium, "parties": parties}, tmp_path, **SETTINGS)
    doc = yaml.safe_load(path.read_text())
    assert path == tmp_path / "project.yml" and doc["api_version"] == 3 and doc["name"] == "pharmafl"
    assert consortium["roster_sha256"] in doc["description"]
    by_name = {p["name"]: p for p in doc["participants"]}
    assert list(by_name) == ["localhost", *SITES, "helper-1", "admin@coordinator.org"]
    assert by_name["localhost"] == {
        "name": "localhost",
        "type": "server",
        "org": "coordinator",
        "fed_learn_port": 18002,
        "admin_port": 18003,
    }
    assert by_name["site-02"] == {"name": "site-02", "type": "client", "org": "site_02"}  # '-' is no org character
    assert by_name["helper-1"]["type"] == "client"  # the 'server' party runs in the server process: no kit
    assert by_name["admin@coordinator.org"] == {
        "name": "admin@coordinator.org",
        "type": "admin",
        "org": "coordinator",
        "role": "project_admin",
    }
    assert [b["path"].rsplit(".", 1)[1] for b in doc["builders"]] == [
        "WorkspaceBuilder",
        "StaticFileBuilder",
        "CertBuilder",
        "SignatureBuilder",
    ]
    with pytest.raises(ConfigError, match="a project file is already there"):
        write_project(consortium, tmp_path, **SETTINGS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"server_host": "bad host"}, "--nvflare-server 'bad host' is not a host name"),
        ({"fl_port": 0}, "--fl-port 0 is not a TCP port"),
        ({"admin_port": 70000}, "--admin-port 70000 is not a TCP port"),
        ({"admin": "admin"}, "--admin 'admin' is not an e-mail address"),
        ({"server_host": "site-01"}, "'site-01' already names the server"),
    ],
)
def test_bad_settings_are_refused(consortium, tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        write_project(consortium, tmp_path, **{**SETTINGS, **change})
    assert not (tmp_path / "project.yml").exists()


def test_a_site_id_nvflare_refuses_is_named(consortium, tmp_path):
    cards = {**consortium["cards"], "site.04": consortium["cards"]["site-01"]}
    with pytest.raises(ConfigError, match=r"site card 'site.04': NVFlare refuses 'site.04' as a participant name"):
        write_project({**consortium, "cards": cards}, tmp_path, **SETTINGS)


def test_provision_makes_a_kit_for_the_server_every_site_and_the_admin(consortium, kits, tmp_path):
    assert sorted(kits) == sorted(["localhost", *SITES, "admin@coordinator.org"])
    assert (kits["localhost"] / "startup" / "fed_server.json").is_file()
    assert (kits["localhost"] / "startup" / "start.sh").is_file()
    for site in SITES:
        client = json.loads((kits[site] / "startup" / "fed_client.json").read_text())
        assert client["client"]["fqsn"] == site and client["servers"][0]["service"]["target"] == "localhost:18002"
        assert (kits[site] / "startup" / "start.sh").is_file() and (kits[site] / "startup" / "client.key").is_file()
    admin = json.loads((kits["admin@coordinator.org"] / "startup" / "fed_admin.json").read_text())
    assert admin["admin"]["username"] == "admin@coordinator.org" and admin["admin"]["port"] == 18003
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "old").write_text("")
    with pytest.raises(ConfigError, match="exists and is not an empty folder"):
        provision(kits["localhost"].parents[2].parent / "project.yml", tmp_path / "ws")


def test_consortium_init_provisions_with_nvflare_server(consortium, tmp_path, capsys):
    cards = [str(tmp_path / f"{s}.json") for s in SITES]
    for path, site in zip(cards, SITES):
        Path(path).write_text(json.dumps(consortium["cards"][site]))
    args = ["consortium", "init", *cards, "--out", str(tmp_path / "plain")]
    assert main(args) == 0 and not (tmp_path / "plain" / "nvflare").exists()  # as before without --nvflare-server
    assert main([*args[:-1], str(tmp_path / "bad"), "--nvflare-server", "localhost"]) == 2
    assert "needs --admin EMAIL" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    home = tmp_path / "home"
    assert main([*args[:-1], str(home), "--nvflare-server", "localhost", "--admin", "admin@coordinator.org"]) == 0
    out = capsys.readouterr().out
    prod = home / "nvflare" / "workspace" / "pharmafl" / "prod_00"
    assert f"kit site site-02  {prod / 'site-02'}" in out and "kit admin admin@coordinator.org  " in out
    server = json.loads((prod / "localhost" / "startup" / "fed_server.json").read_text())["servers"][0]
    assert server["service"]["target"] == "localhost:8002" and server["admin_port"] == 8002  # defaults


def test_exported_job_carries_no_path_and_no_site_data(exported, tmp_path_factory):
    files = sorted(str(p.relative_to(exported.job)) for p in exported.job.rglob("*") if p.is_file())
    expected = ["app_server/config/config_fed_server.json", "app_server/custom/pharmafl_nvflare.py", "meta.json"]
    for site in SITES:
        expected += [
            f"app_{site}/config/config_fed_client.json",
            f"app_{site}/custom/client.py",
            f"app_{site}/custom/pharmafl_plan.json",
        ]
    assert files == sorted(expected)  # no store, table or key of any site
    stores = [str(exported.plan.site_home(s) / "store") for s in SITES]
    assert all(Path(s).is_dir() for s in stores)
    forbidden = [str(exported.run), str(exported.run.resolve()), str(tmp_path_factory.getbasetemp()), *stores]
    for name in files:
        text = (exported.job / name).read_text()
        assert not [f for f in forbidden if f in text], name
    meta = json.loads((exported.job / "meta.json").read_text())
    assert meta["deploy_map"] == {"app_server": ["server"], **{f"app_{s}": [s] for s in SITES}}  # never @ALL
    plan = json.loads((exported.job / "app_site-01" / "custom" / "pharmafl_plan.json").read_text())
    assert plan["site_homes"] is None and plan["cache_dir"] is None and plan["run_id"] == exported.plan.run_id
    assert plan["cfg"]["data"]["dataset"] == Path(exported.plan.cfg.data.dataset).name


def test_site_and_server_resolve_their_paths_from_their_kits(exported, tmp_path):
    from nvflare.apis.workspace import Workspace

    from pharmafl.pipeline.nvflare_client import plan_at_site
    from pharmafl.pipeline.nvflare_server import load_plan
    from pharmafl.pipeline.run import make_site

    kits = provision(write_project(load_consortium(exported.run), tmp_path, **SETTINGS), tmp_path / "ws")
    home, kit, job_id = exported.plan.site_home("site-01"), kits["site-01"], "5c3f1d2e-job"
    custom = Path(Workspace(str(kit), "site-01").get_app_custom_dir(job_id))
    shutil.copytree(exported.job / "app_site-01" / "custom", custom)
    with pytest.raises(ConfigError, match="pharmafl site nvflare-config SITE_HOME --kit"):
        plan_at_site(custom, "pharmafl_plan.json", "site-01", job_id)  # the kit names no home yet
    with pytest.raises(ConfigError, match="is the home of 'site-02', but the kit .* belongs to 'site-01'"):
        write_site_config(kit, exported.plan.site_home("site-02"))
    assert main(["site", "nvflare-config", str(home), "--kit", str(kit)]) == 0
    assert json.loads(local_config_path(kit).read_text()) == {
        "cache_dir": None,
        "format": "pharmafl-nvflare-local-v1",
        "role": "site",
        "site": "site-01",
        "site_home": str(home),
    }
    assert site_of_kit(kit, "site-01") == (home, None)
    plan = plan_at_site(custom, "pharmafl_plan.json", "site-01", job_id)
    assert plan.site_home("site-01") == home and plan.run_id == exported.plan.run_id
    assert make_site(plan, "site-01").home.path == home
    with pytest.raises(ConfigError, match="is not site-02's app folder"):
        plan_at_site(custom, "pharmafl_plan.json", "site-02", job_id)
    with pytest.raises(ConfigError, match="names site 'site-01', but this kit runs as 'site-02'"):
        site_of_kit(kit, "site-02")

    server = SimpleNamespace(get_workspace=lambda: Workspace(str(kits["localhost"]), "server"))
    with pytest.raises(ConfigError, match="pharmafl consortium nvflare-config "):
        load_plan("run/plan.json", server)
    write_server_config(kits["localhost"], exported.run.parent)
    assert load_plan("run/plan.json", server).run_dir == exported.run.resolve()
    with pytest.raises(ConfigError, match="holds no run 'other'"):
        load_plan("other/plan.json", server)


def test_prod_needs_an_admin_kit(kits, tmp_path):
    from pharmafl.pipeline.engine_nvflare import NVFlareEngine

    with pytest.raises(ConfigError, match="federation.nvflare_admin_kit"):
        FederationConfig(nvflare_env="prod")
    config = tmp_path / "prod.yaml"
    config.write_text(yaml.safe_dump({"federation": {"nvflare_env": "prod"}}))
    with pytest.raises(ConfigError, match="federation.nvflare_admin_kit"):
        load_run_config(config)
    with pytest.raises(
        ConfigError, match="federation.nvflare_admin_kit: .* is the site kit, not the startup kit of an NVFlare admin"
    ):
        FederationConfig(nvflare_env="prod", nvflare_admin_kit=str(kits["site-01"])).admin_kit()
    with pytest.raises(ConfigError, match="federation.nvflare_admin_kit: .* is no startup kit"):
        FederationConfig(nvflare_env="prod", nvflare_admin_kit=str(tmp_path / "missing")).admin_kit()
    fed = FederationConfig(nvflare_env="prod", nvflare_admin_kit=str(kits["admin@coordinator.org"]))
    env = NVFlareEngine._env(SimpleNamespace(cfg=SimpleNamespace(federation=fed), run_dir=tmp_path))
    assert type(env).__name__ == "ProdEnv" and env.username == "admin@coordinator.org"
    assert env.startup_kit_location == str(kits["admin@coordinator.org"])


def test_the_server_kit_keeps_its_job_and_snapshot_stores_in_the_kit(kits, tmp_path):
    """NVFlare's default stores every job in the machine-wide /tmp/nvflare; the owner's config moves them."""
    server = kits["localhost"]
    default = json.loads((server / "local" / "resources.json.default").read_text())
    assert "/tmp/nvflare/jobs-storage" in json.dumps(default)  # what NVFlare provisions
    write_server_config(server, tmp_path)
    doc = json.loads((server / "local" / "resources.json").read_text())  # NVFlare reads it before the default
    assert doc["snapshot_persistor"]["args"]["storage"]["args"]["root_dir"] == str(
        server / "storage" / "snapshot-storage"
    )
    assert [c["args"]["uri_root"] for c in doc["components"] if c["id"] == "job_manager"] == [
        str(server / "storage" / "jobs-storage")
    ]
    assert "/tmp/nvflare" not in json.dumps(doc) and (server / "storage").stat().st_mode & 0o077 == 0
