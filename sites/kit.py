"""What a participant's NVFlare startup kit says about this machine: its local config.

``nvflare provision`` (``pharmafl consortium init --nvflare-server``) gives every site a
startup kit; the job the coordinator submits carries no path of any machine. Each kit names
its owner's own paths in one file of its ``local/`` folder, which NVFlare never sends
anywhere and a job never overwrites::

    KIT/local/pharmafl.json
      site kit:   {"format": "pharmafl-nvflare-local-v1", "role": "site", "site": "site-01",
                   "site_home": "/abs/SITE_HOME", "cache_dir": "/abs/CACHE" | null}
      server kit: {"format": "pharmafl-nvflare-local-v1", "role": "server", "runs": "/abs/RUNS"}

A site writes its own with ``pharmafl site nvflare-config SITE_HOME --kit KIT``;
the coordinator the server's with ``pharmafl consortium nvflare-config KIT --runs
DIR``. Paths are absolute, as resolved on the machine that wrote the file; the kit and the
home stay where they were when it was written (move one, write the file again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pharmafl.errors import ConfigError
from pharmafl.fileio import write_bytes_atomic
from pharmafl.sites.home import CARD_FILE, check_card, read_json

LOCAL_FORMAT = "pharmafl-nvflare-local-v1"
LOCAL_FILE = "pharmafl.json"
KIT_MARKERS = {"site": "fed_client.json", "server": "fed_server.json", "admin": "fed_admin.json"}
_FIELDS = {"site": ("cache_dir", "format", "role", "site", "site_home"), "server": ("format", "role", "runs")}


def local_config_path(kit: Path) -> Path:
    return Path(kit) / "local" / LOCAL_FILE


def check_kit(kit: Path, role: str) -> Path:
    """``kit`` (absolute) if it is an NVFlare startup kit of ``role`` (``site``, ``server``, ``admin``)."""
    kit = Path(kit).absolute()
    marker = kit / "startup" / KIT_MARKERS[role]
    if not marker.is_file():
        found = [r for r, m in KIT_MARKERS.items() if (kit / "startup" / m).is_file()]
        what = f"the {found[0]} kit" if found else "no startup kit"
        raise ConfigError(
            f"{kit} is {what}, not the startup kit of an NVFlare {role} (no startup/{marker.name}); "
            f"give the folder nvflare provision wrote for the {role} (consortium init prints it)"
        )
    return kit


def kit_client_name(kit: Path) -> str:
    """The NVFlare client name a site kit connects as (``startup/fed_client.json``)."""
    path = check_kit(kit, "site") / "startup" / KIT_MARKERS["site"]
    name = (read_json(path, "NVFlare client config").get("client") or {}).get("fqsn")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: no client.fqsn (the site's NVFlare name); the kit is damaged, provision it again")
    return name


def write_local_config(kit: Path, doc: dict) -> Path:
    """Write ``doc`` as the kit's ``local/pharmafl.json`` (atomically, mode 0600)."""
    path = local_config_path(kit)
    write_bytes_atomic(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    return path


def write_site_config(kit: Path, home: Path, cache_dir: Path | None = None) -> Path:
    """Name ``home`` as the site home of the site kit ``kit``; return the file written.

    Refuses a kit that is not a site kit and a home whose card is not the kit's site.
    """
    name = kit_client_name(kit)
    home = Path(home).absolute()
    card = check_card(read_json(home / CARD_FILE, "site card (is this a site home?)"), str(home / CARD_FILE))
    if card["site"] != name:
        raise ConfigError(
            f"{home} is the home of {card['site']!r}, but the kit {kit} belongs to {name!r}; give this "
            "site's own kit and home"
        )
    cache = str(Path(cache_dir).absolute()) if cache_dir is not None else None
    return write_local_config(
        kit, {"cache_dir": cache, "format": LOCAL_FORMAT, "role": "site", "site": name, "site_home": str(home)}
    )


def read_local_config(kit: Path, role: str, *, fix: str) -> dict[str, Any]:
    """The kit's ``local/pharmafl.json`` of ``role``, checked; ``fix`` says how to write it."""
    path = local_config_path(kit)
    if not path.is_file():
        raise ConfigError(
            f"{path}: missing; the {role}'s startup kit does not say where its pharmafl data is. On that machine: {fix}"
        )
    doc = read_json(path, "pharmafl kit config")
    if (
        not isinstance(doc, dict)
        or doc.get("format") != LOCAL_FORMAT
        or doc.get("role") != role
        or tuple(sorted(doc)) != _FIELDS[role]
    ):
        raise ConfigError(
            f"{path}: not a {role}'s {LOCAL_FORMAT} file (fields {list(_FIELDS[role])}); write it again: {fix}"
        )
    for key in ("site_home", "runs", "cache_dir"):
        if doc.get(key) is not None and not Path(doc[key]).is_absolute():
            raise ConfigError(f"{path}: {key} {doc[key]!r} is not an absolute path; write it again: {fix}")
    return doc


def site_of_kit(kit: Path, site: str) -> tuple[Path, Path | None]:
    """The site home (and featurization cache, or None) that ``site``'s kit names."""
    fix = f"pharmafl site nvflare-config SITE_HOME --kit {kit}"
    doc = read_local_config(kit, "site", fix=fix)
    if doc["site"] != site:
        raise ConfigError(
            f"{local_config_path(kit)} names site {doc['site']!r}, but this kit runs as {site!r}; write it again: {fix}"
        )
    home = Path(doc["site_home"])
    if not (home / CARD_FILE).is_file():
        raise ConfigError(
            f"{local_config_path(kit)}: site_home {home} holds no {CARD_FILE} (moved or not readable "
            f"by this user?); write it again: {fix}"
        )
    return home, Path(doc["cache_dir"]) if doc["cache_dir"] else None
