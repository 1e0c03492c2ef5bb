"""The run config: typed and frozen, one clear error per mistake, ``--set`` overrides, min_sites
as a fraction, and a JSON Schema that is current and accepts the shipped configs."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import StrictInt

from pharmafl.errors import ConfigError
from pharmafl.pipeline.config import DataConfig, FederationConfig, RunConfig, json_schema, load_run_config
from pharmafl.pipeline.configio import apply_overrides, from_dict, to_dict
from pharmafl.typedconfig import section

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def write(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


def error_of(path: Path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_run_config(path, overrides)
    return str(info.value)


# --- one clear error -------------------------------------------------------------------------


def test_unknown_key_names_the_file_the_key_a_suggestion_and_the_valid_keys(tmp_path):
    cfg = write(tmp_path / "bad.yaml", federation={"rouns": 3})
    msg = error_of(cfg)
    assert msg.startswith(f"{cfg}: federation.rouns: unknown key (did you mean 'rounds'?); valid keys: ")
    assert "local_epochs" in msg and "\n" not in msg


def test_unknown_section_and_unknown_strategy_option_get_a_suggestion(tmp_path):
    assert "federaton: unknown key (did you mean 'federation'?)" in error_of(write(tmp_path / "a.yaml", federaton={}))
    opts = write(tmp_path / "b.yaml", federation={"strategy": "fedprox", "strategy_options": {"muu": 0.1}})
    assert "federation.strategy_options.muu: unknown key (did you mean 'mu'?); valid keys: mu" in error_of(opts)


@pytest.mark.parametrize(
    "sections, message",
    [
        (
            {"data": {"partition": "iidd"}},
            "data.partition: Could not resolve 'iidd' among choices "
            "['compound', 'target-family', 'dirichlet', 'quantity', 'iid'] (did you mean 'iid'?)",
        ),
        (
            {"federation": {"strategy": "fedproxx"}},
            "federation.strategy: Could not resolve 'fedproxx' among choices "
            "['fedavg', 'fedprox', 'scaffold', 'fedadam', 'fedyogi'] (did you mean 'fedprox'?)",
        ),
        ({"train": {"batching": "shuffled"}}, "train.batching: Could not resolve 'shuffled' among choices"),
        ({"privacy": {"mode": "global"}}, "privacy.mode: Could not resolve 'global' among choices ['off', 'local'"),
    ],
)
def test_a_bad_choice_lists_the_valid_ones(tmp_path, sections, message):
    assert message in error_of(write(tmp_path / "bad.yaml", **sections))


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"federation": {"rounds": "5"}}, "federation.rounds must be an integer, got '5'"),
        ({"federation": {"rounds": 1.5}}, "federation.rounds must be an integer, got 1.5"),
        ({"federation": {"rounds": True}}, "federation.rounds must be an integer, got True"),
        ({"ledger": {"enabled": "yes"}}, "ledger.enabled must be true or false, got 'yes'"),
        ({"train": {"lr": "fast"}}, "train.lr must be a number, got 'fast'"),
        ({"data": {"dataset": 7}}, "data.dataset must be a string, got 7"),
        ({"federation": {"min_sites": "most"}}, "federation.min_sites must be an integer or a number, got 'most'"),
        ({"model": "gin"}, "model must be a mapping of ModelConfig settings, got 'gin'"),
        ({"secure_aggregation": {"endpoints": {"helper-1": 9101}}}, "endpoints.helper-1 must be a string, got 9101"),
    ],
)
def test_wrong_types_are_refused_not_coerced(tmp_path, sections, message):
    assert message in error_of(write(tmp_path / "bad.yaml", **sections))


def test_an_integer_is_a_fine_float_and_1e_3_is_a_number(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("train:\n  lr: 1e-3\n  weight_decay: 0\n")
    loaded = load_run_config(cfg)
    assert loaded.train.lr == 0.001 and type(loaded.train.weight_decay) is float


def test_a_yaml_list_fills_a_tuple_field():
    @section("demo")
    class Demo:
        ids: tuple[StrictInt, ...] = ()

    assert from_dict(Demo, {"ids": [1, 2]}).ids == (1, 2)
    with pytest.raises(ConfigError, match=r"demo.ids\[1\] must be an integer, got 'x'"):
        from_dict(Demo, {"ids": [1, "x"]}, prefix="demo")


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"federation": {"min_sites": 11}}, "federation.min_sites (11) exceeds data.sites (10)"),
        ({"privacy": {"mode": "client", "epsilon": 1.0}}, "privacy.mode 'client' needs federation.weighting 'uniform'"),
        (
            {"federation": {"strategy": "scaffold"}, "secure_aggregation": {"enabled": True}},
            "federation.strategy 'scaffold' cannot run under secure_aggregation",
        ),
        ({"federation": {"strategy": "fedprox", "strategy_options": {"mu": -1}}}, "strategy_options.mu must be >= 0"),
    ],
)
def test_cross_field_rules_name_both_keys(tmp_path, sections, message):
    cfg = write(tmp_path / "bad.yaml", **sections)
    msg = error_of(cfg)
    assert msg.startswith(f"{cfg}: ") and message in msg


def test_building_in_python_is_checked_the_same_way():
    with pytest.raises(ConfigError, match="data.sites must be an integer, got '3'"):
        DataConfig(sites="3")
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="federation.strategy: Could not resolve 'fedsgd'"):
        replace(cfg.federation, strategy="fedsgd")
    with pytest.raises(ConfigError, match="exceeds data.sites"):
        replace(cfg, federation=replace(cfg.federation, min_sites=11))
    with pytest.raises(Exception, match="cannot assign"):
        cfg.seed = 3  # frozen


def test_the_plan_round_trip_gives_the_same_config():
    cfg = RunConfig(data=DataConfig(sites=4), federation=FederationConfig(strategy="fedprox", min_sites=0.5))
    assert from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg


# --- min_sites: a count or a fraction --------------------------------------------------------


@pytest.mark.parametrize(
    "min_sites, sites, count", [(0.8, 10, 8), (0.8, 3, 3), (0.7, 10, 7), (0.5, 3, 2), (1.0, 4, 4), (2, 5, 2)]
)
def test_min_sites_resolves_to_a_count(min_sites, sites, count):
    cfg = RunConfig(data=DataConfig(sites=sites), federation=FederationConfig(min_sites=min_sites))
    assert cfg.min_sites == count


def test_the_demo_configs_scale_with_fewer_sites_but_a_count_does_not(tmp_path):
    for path in CONFIGS:
        assert load_run_config(path, ["data.sites=3"]).min_sites == 3, path
    counted = write(tmp_path / "count.yaml", federation={"min_sites": 8})
    assert "federation.min_sites (8) exceeds data.sites (3)" in error_of(counted, ["data.sites=3"])


@pytest.mark.parametrize("value", [0, -1, 0.0, 1.5, 8.0])
def test_min_sites_outside_a_count_or_fraction_is_refused(value):
    with pytest.raises(ConfigError, match="federation.min_sites"):
        FederationConfig(min_sites=value)


# --- --set -----------------------------------------------------------------------------------


def test_set_reaches_any_key_and_reads_values_as_yaml():
    cfg = load_run_config(
        CONFIGS[-1],
        [
            "federation.rounds=3",
            "data.partition=iid",
            "train.lr=1e-3",
            "federation.strategy=fedprox",
            "federation.strategy_options={mu: 0.05}",
            "privacy.sites.site-02.epsilon=2",  # creates the nested mappings
            "federation.rounds=4",  # later wins
        ],
    )
    assert cfg.federation.rounds == 4 and cfg.data.partition == "iid" and cfg.train.lr == 0.001
    assert cfg.federation.strategy_options == {"mu": 0.05}
    assert cfg.privacy.sites == {"site-02": {"epsilon": 2}}


def test_set_leaves_the_file_mapping_alone():
    data = {"federation": {"rounds": 5}}
    assert apply_overrides(data, ["federation.rounds=2"]) == {"federation": {"rounds": 2}}
    assert data == {"federation": {"rounds": 5}}


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "federation.rouns=3",
            "(with --set federation.rouns=3): federation.rouns: unknown key (did you mean 'rounds'?)",
        ),
        ("data.partition=iidd", "data.partition: Could not resolve 'iidd' among choices"),
        ("federation.rounds", "--set 'federation.rounds' is not section.key=value"),
        ("=3", "is not section.key=value"),
        ("data.sites.x=1", "--set data.sites.x=1: data.sites is 10, not a section of keys"),
        ("federation.strategy_options={mu: 0.1", "the value is not YAML"),
    ],
)
def test_a_bad_set_is_one_clear_error(override, message):
    assert message in error_of(CONFIGS[-1], [override])


# --- the JSON Schema -------------------------------------------------------------------------


def test_the_committed_schema_is_current():
    committed = json.loads((ROOT / "docs" / "config.schema.json").read_text())
    assert committed == json_schema(), (
        "regenerate: python -m pharmafl.pipeline.config --schema > docs/config.schema.json"
    )


def test_the_schema_carries_choices_and_descriptions():
    schema = json_schema()
    fed = schema["$defs"]["FederationConfig"]
    assert fed["additionalProperties"] is False
    assert fed["properties"]["strategy"]["enum"] == ["fedavg", "fedprox", "scaffold", "fedadam", "fedyogi"]
    assert "fraction" in fed["properties"]["min_sites"]["description"]
    assert schema["$defs"]["ModelConfig"]["properties"]["drug_encoder"]["enum"] == ["gin", "gcn", "gat"]


def schema_errors(value, node, schema, where="") -> list[str]:
    """The few JSON Schema keywords pydantic's schema of the config uses (no jsonschema in the venv)."""
    if "$ref" in node:
        return schema_errors(value, schema["$defs"][node["$ref"].rsplit("/", 1)[1]], schema, where)
    if "anyOf" in node:
        tries = [schema_errors(value, n, schema, where) for n in node["anyOf"]]
        return [] if any(not t for t in tries) else tries[0]
    if "enum" in node and value not in node["enum"]:
        return [f"{where}: {value!r} not in {node['enum']}"]
    kinds = {"object": dict, "string": str, "boolean": bool, "null": type(None), "integer": int, "number": (int, float)}
    kind = node.get("type")
    if kind and (not isinstance(value, kinds[kind]) or (kind in ("integer", "number") and isinstance(value, bool))):
        return [f"{where}: {value!r} is not {kind}"]
    errors = []
    if kind == "object":
        props = node.get("properties", {})
        for key, sub in value.items():
            if key in props:
                errors += schema_errors(sub, props[key], schema, f"{where}.{key}")
            elif node.get("additionalProperties") is False:
                errors.append(f"{where}.{key}: not allowed")
    return errors


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates_against_the_schema_and_loads(path):
    assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=../docs/config.schema.json"
    schema = json.loads((ROOT / "docs" / "config.schema.json").read_text())
    assert schema_errors(yaml.safe_load(path.read_text()), schema, schema) == []
    load_run_config(path)


def test_the_schema_check_above_can_fail():
    schema = json_schema()
    bad = {"federation": {"rouns": 3, "strategy": "fedsgd"}, "ledger": {"enabled": "yes"}}
    assert schema_errors(bad, schema, schema) == [
        ".federation.rouns: not allowed",
        ".federation.strategy: 'fedsgd' not in ['fedavg', 'fedprox', 'scaffold', 'fedadam', 'fedyogi']",
        ".ledger.enabled: 'yes' is not boolean",
    ]


def test_python_m_prints_the_schema():
    out = subprocess.run(
        [sys.executable, "-m", "pharmafl.pipeline.config", "--schema"], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == json_schema()


# --- registries agree; reading a config loads no torch ---------------------------------------


def test_names_in_the_config_match_the_registries():
    from pharmafl.models.config import DEFAULT_MAX_LEN, DrugEncoderName
    from pharmafl.models.drug_encoders import DRUG_ENCODERS
    from pharmafl.models.sequence import DEFAULT_MAX_LEN as SEQUENCE_MAX_LEN
    from pharmafl.pipeline.strategies import STRATEGIES
    from pharmafl.pipeline.strategy_options import STRATEGY_OPTIONS, StrategyName
    from pharmafl.sites.batching import BATCHINGS
    from pharmafl.sites.train_config import Batching

    assert set(get_args(DrugEncoderName)) == set(DRUG_ENCODERS)
    assert DEFAULT_MAX_LEN == SEQUENCE_MAX_LEN
    assert set(get_args(Batching)) == set(BATCHINGS)
    assert set(get_args(StrategyName)) == set(STRATEGIES) == set(STRATEGY_OPTIONS)
    assert all(STRATEGIES[name].Options is STRATEGY_OPTIONS[name] for name in STRATEGIES)


def test_reading_a_config_and_run_help_load_no_torch():
    heavy = ("torch", "torch_geometric", "rdkit", "opacus", "nvflare", "crypten", "pandas", "pyarrow")
    code = (
        "import sys; import pharmafl.pipeline.cli_run; from pharmafl.pipeline.config import load_run_config; "
        f"load_run_config({str(CONFIGS[-1])!r}); print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
