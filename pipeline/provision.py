"""NVFlare provisioning of a consortium: ``project.yml`` from its cards, then startup kits.

``pharmafl consortium init ... --nvflare-server HOST`` writes NVFlare 2.9's project file
(api_version 3) and runs NVFlare's provisioner on it. The participants are:

- the server, named ``HOST`` (the name the sites dial and the server certificate's subject),
  org ``coordinator``, listening on ``fed_learn_port`` (sites) and ``admin_port`` (admin);
- one client per site card, named by the site id; org: the card's ``org`` if it has one, else
  the site id with every character NVFlare refuses in an org (all but letters, digits, ``_``)
  replaced by ``_`` (``site-01`` -> ``site_01``);
- one client per aggregation party card of role ``helper`` (``consortium["parties"]``, when
  present; the ``server`` party runs inside the coordinator's server process). The pharmafl
  job is deployed to the sites only, so a helper's kit never runs the training script;
- the admin (an e-mail address), org ``coordinator``, role ``project_admin``;

and NVFlare's default builders (workspace, static files, certificates, signatures), as
``nvflare provision`` generates them. Kits land in ``WORKSPACE/<project>/prod_00/<name>/``.

Each kit is handed to its participant, who runs ``startup/start.sh`` as its own user. Nothing
pharmafl needs at run time is in a kit until its owner writes the kit's local config
(:mod:`pharmafl.sites.kit`): a site with ``pharmafl site nvflare-config``, the coordinator
with :func:`write_server_config` (``pharmafl consortium nvflare-config``), which also moves the
server's job and snapshot stores from NVFlare's machine-wide ``/tmp/nvflare`` into the kit.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import yaml

from pharmafl.errors import ConfigError
from pharmafl.fileio import write_bytes_atomic
from pharmafl.sites.home import read_json
from pharmafl.sites.kit import LOCAL_FORMAT, check_kit, read_local_config, write_local_config

PROJECT_FILE = "project.yml"
COORDINATOR_ORG = "coordinator"
BUILDERS = [
    {
        "path": "nvflare.lighter.impl.workspace.WorkspaceBuilder",
        "args": {"template_file": ["master_template.yml", "aws_template.yml", "azure_template.yml"]},
    },
    {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
    {"path": "nvflare.lighter.impl.cert.CertBuilder"},
    {"path": "nvflare.lighter.impl.signature.SignatureBuilder"},
]
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_NOT_ORG = re.compile(r"[^A-Za-z0-9_]")


def _nvflare_refuses(name: str, kind: str) -> str | None:
    """NVFlare's own reason for refusing ``name`` as a ``kind`` (server, client, admin, org), or None."""
    from nvflare.apis.utils.format_check import name_check, type_pattern_mapping

    bad, _ = name_check(name, kind) if isinstance(name, str) else (True, "")
    return f"NVFlare {kind} names must match {type_pattern_mapping[kind]}" if bad else None


def _port(value, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{option} {value!r} is not a TCP port (an integer 1..65535)")
    return value


def _org(name: str, card: dict, where: str) -> str:
    org = card.get("org") or _NOT_ORG.sub("_", name)
    if why := _nvflare_refuses(org, "org"):
        raise ConfigError(f"{where}: org {org!r} is refused by NVFlare ({why}); fix the card's org")
    return org


def check_settings(*, server_host: str, fl_port: int, admin_port: int, admin: str, project: str) -> None:
    """Refuse a server host, port, admin or project name NVFlare would refuse (before anything is written)."""
    if why := _nvflare_refuses(server_host, "server"):
        raise ConfigError(f"--nvflare-server {server_host!r} is not a host name the sites can dial ({why})")
    _port(fl_port, "--fl-port")
    _port(admin_port, "--admin-port")
    if why := _nvflare_refuses(admin, "admin"):
        raise ConfigError(f"--admin {admin!r} is not an e-mail address NVFlare accepts as an admin ({why})")
    if not isinstance(project, str) or not _PROJECT.fullmatch(project):
        raise ConfigError(
            f"--project {project!r}: use 1-63 letters, digits, '-' and '_', starting with a letter or "
            "digit (it names the kits' folder and the NVFlare project)"
        )


def participants(consortium: dict, *, server_host: str, fl_port: int, admin_port: int, admin: str) -> list[dict]:
    """project.yml's participant list for ``consortium`` (see the module docstring)."""
    server = {
        "name": server_host,
        "type": "server",
        "org": COORDINATOR_ORG,
        "fed_learn_port": fl_port,
        "admin_port": admin_port,
    }
    clients = [(s, c, f"site card {s!r}") for s, c in sorted(consortium["cards"].items())]
    clients += [
        (p, c, f"party card {p!r}")
        for p, c in sorted(consortium.get("parties", {}).items())
        if c.get("role") == "helper"
    ]
    seen = {server_host: "the server", admin: "the admin"}
    out = [server]
    for name, card, where in clients:
        if why := _nvflare_refuses(name, "client"):
            raise ConfigError(
                f"{where}: NVFlare refuses {name!r} as a participant name ({why}); that participant "
                "needs an id of letters, digits, '-' and '_' (set up again with a new id)"
            )
        if name in seen:
            raise ConfigError(
                f"{where}: {name!r} already names {seen[name]}; NVFlare participant names are unique "
                "(choose another --nvflare-server / --admin)"
            )
        seen[name] = where
        out.append({"name": name, "type": "client", "org": _org(name, card, where)})
    return [*out, {"name": admin, "type": "admin", "org": COORDINATOR_ORG, "role": "project_admin"}]


def write_project(
    consortium: dict, out_dir: Path, *, server_host: str, fl_port: int, admin_port: int, admin: str, project: str
) -> Path:
    """Write ``out_dir/project.yml`` for ``consortium`` (a loaded ``consortium.json``); return its path."""
    check_settings(server_host=server_host, fl_port=fl_port, admin_port=admin_port, admin=admin, project=project)
    target = Path(out_dir) / PROJECT_FILE
    if target.exists():
        raise ConfigError(f"{target}: a project file is already there; provision into a new folder")
    doc = {
        "api_version": 3,
        "name": project,
        "description": f"pharmafl consortium, roster {consortium['roster_sha256']}",
        "participants": participants(
            consortium, server_host=server_host, fl_port=fl_port, admin_port=admin_port, admin=admin
        ),
        "builders": BUILDERS,
    }
    write_bytes_atomic(target, yaml.safe_dump(doc, sort_keys=False).encode())
    return target


def provision(project_yml: Path, workspace: Path) -> dict[str, Path]:
    """Run NVFlare's provisioner on ``project_yml`` into the new folder ``workspace``.

    Returns participant name -> its startup kit (``WORKSPACE/<project>/prod_00/<name>``).
    """
    from nvflare.lighter.constants import CtxKey
    from nvflare.lighter.prov_utils import prepare_builders, prepare_packager
    from nvflare.lighter.provision import prepare_project
    from nvflare.lighter.provisioner import Provisioner

    workspace = Path(workspace).absolute()
    if workspace.exists() and (not workspace.is_dir() or any(workspace.iterdir())):
        raise ConfigError(
            f"{workspace}: exists and is not an empty folder; provision into a new workspace (kits "
            "are never re-provisioned in place: each run of the provisioner makes a new root CA)"
        )
    try:
        spec = yaml.safe_load(Path(project_yml).read_text(encoding="utf-8"))
        project = prepare_project(spec)
        provisioner = Provisioner(str(workspace), prepare_builders(spec), prepare_packager(spec))
    except (OSError, yaml.YAMLError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{project_yml}: NVFlare refuses this project file: {exc}") from None
    log = logging.getLogger("pharmafl.provision")
    ctx = provisioner.provision(project, logger=log)
    prod = workspace / project.name / "prod_00"
    if ctx.get(CtxKey.BUILD_ERROR) or not prod.is_dir():
        errors = "; ".join(ctx.get(CtxKey.ERRORS) or []) or "no kits written"
        raise ConfigError(f"{project_yml}: NVFlare's provisioner failed: {errors} (workspace {workspace})")
    kits = {p.name: prod / p.name for p in project.get_all_participants()}
    missing = sorted(n for n, k in kits.items() if not (k / "startup").is_dir())
    if missing:
        raise ConfigError(f"{prod}: NVFlare wrote no startup kit for {missing}")
    return kits


def admin_name(kit: Path) -> str:
    """The admin user an admin kit logs in as (``startup/fed_admin.json``)."""
    path = check_kit(kit, "admin") / "startup" / "fed_admin.json"
    name = (read_json(path, "NVFlare admin config").get("admin") or {}).get("username")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: no admin.username; the kit is damaged, provision it again")
    return name


def write_server_config(kit: Path, runs: Path) -> Path:
    """Name ``runs``, the folder holding the coordinator's run directories, in the server kit;
    and keep the server's job and snapshot stores in the kit (:func:`keep_storage_in_kit`)."""
    runs = Path(runs).absolute()
    if not runs.is_dir():
        raise ConfigError(
            f"{runs}: no such directory; create the folder the coordinator's runs live in "
            "(pharmafl run --out RUNS/<name>)"
        )
    kit = check_kit(kit, "server")
    keep_storage_in_kit(kit)
    return write_local_config(kit, {"format": LOCAL_FORMAT, "role": "server", "runs": str(runs)})


def keep_storage_in_kit(kit: Path) -> Path:
    """Write ``KIT/local/resources.json``: NVFlare's server resources with the job store and the
    snapshot store in ``KIT/storage/`` (0700); return that folder.

    NVFlare's provisioned default (``local/resources.json.default``) keeps every submitted job
    and every run snapshot in ``/tmp/nvflare/{jobs,snapshot}-storage``: one machine-wide,
    world-readable folder, which the first user to run a server owns (another user's server
    then fails to store a job: ``StorageException``). NVFlare reads ``resources.json`` before
    ``resources.json.default``; the paths are absolute, as this machine resolves the kit.
    """
    default = kit / "local" / "resources.json.default"
    doc = read_json(default, "NVFlare server resources")
    storage = kit / "storage"
    try:
        snapshot = doc["snapshot_persistor"]["args"]["storage"]["args"]
        (manager,) = [c for c in doc["components"] if c.get("id") == "job_manager"]
        snapshot["root_dir"] = str(storage / "snapshot-storage")
        manager["args"]["uri_root"] = str(storage / "jobs-storage")
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConfigError(
            f"{default}: not the server resources NVFlare's provisioner writes (no snapshot_persistor "
            "storage or job_manager component); provision the kit again"
        ) from None
    for folder in (storage, storage / "snapshot-storage", storage / "jobs-storage"):
        folder.mkdir(mode=0o700, exist_ok=True)
        folder.chmod(0o700)
    write_bytes_atomic(kit / "local" / "resources.json", (json.dumps(doc, indent=2) + "\n").encode())
    return storage


def runs_of_kit(kit: Path) -> Path:
    """The coordinator's folder of run directories, as the server kit's local config names it."""
    fix = f"pharmafl consortium nvflare-config {kit} --runs RUNS"
    return Path(read_local_config(kit, "server", fix=fix)["runs"])
