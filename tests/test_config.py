from pathlib import Path

import pytest
import yaml
from conftest import ALL_MODELS

from spark_app.cli import main
from spark_app.config import ConfigError, dump_yaml, load_settings
from spark_app.redact import is_secret_key, redact

CONF = Path(__file__).resolve().parent.parent / "conf"


def write_env_file(tmp_path: Path, text: str) -> Path:
    """An environment file beside copies of base.yaml and models.yaml, as a deployment would have."""
    for name in ("base.yaml", "models.yaml"):
        (tmp_path / name).write_text((CONF / name).read_text())
    env_file = tmp_path / "env.yaml"
    env_file.write_text(text)
    return env_file


def test_embedded_default_resolves_every_section():
    s = load_settings(None, environ={})
    assert s.paths.features.endswith("features")
    assert s.dataset.horizons == list(range(1, 25))
    assert [p.model_id for p in s.models.enabled_profiles()] == list(ALL_MODELS)
    catalog = s.models.catalog()
    assert catalog.cat_features(catalog["paid"]) == ("segment", "tariff", "region", "device_type")


def test_environment_file_overrides_base(tmp_path):
    env_file = write_env_file(tmp_path, "dataset:\n  sample_rate: 0.25\n")
    s = load_settings(env_file, environ={})
    assert s.dataset.sample_rate == 0.25
    assert s.dataset.target_months == 13


def test_env_vars_override_files(tmp_path):
    env_file = write_env_file(tmp_path, "paths:\n  features: /from/file\n")
    s = load_settings(
        env_file, environ={"CLTV_PATHS__FEATURES": "hdfs:///dwh/f", "CLTV_DATASET__HORIZONS": "[1, 2, 3]"}
    )
    assert s.paths.features == "hdfs:///dwh/f"
    assert s.dataset.horizons == [1, 2, 3]


def test_unknown_key_names_key_and_file(tmp_path):
    env_file = write_env_file(tmp_path, "dataset:\n  sample_rat: 0.5\n")
    with pytest.raises(ConfigError, match=r"dataset\.sample_rat.*" + str(env_file)):
        load_settings(env_file, environ={})


def test_wrong_value_names_key_and_file(tmp_path):
    env_file = write_env_file(tmp_path, "dataset:\n  sample_rate: 1.5\n")
    with pytest.raises(ConfigError, match=r"dataset\.sample_rate.*less than or equal to 1.*env\.yaml"):
        load_settings(env_file, environ={})


def test_wrong_type_in_base_names_base_file(tmp_path):
    env_file = write_env_file(tmp_path, "{}\n")
    (tmp_path / "base.yaml").write_text("dataset:\n  target_months: thirteen\n")
    with pytest.raises(ConfigError, match=r"dataset\.target_months.*base\.yaml"):
        load_settings(env_file, environ={})


def test_bad_env_value_names_the_variable(tmp_path):
    env_file = write_env_file(tmp_path, "{}\n")
    with pytest.raises(ConfigError, match="CLTV_COSTS__COST_PER_GB"):
        load_settings(env_file, environ={"CLTV_COSTS__COST_PER_GB": "-1"})


def test_unknown_env_section_is_an_error(tmp_path):
    env_file = write_env_file(tmp_path, "{}\n")
    with pytest.raises(ConfigError, match="CLTV_PATH__FEATURES"):
        load_settings(env_file, environ={"CLTV_PATH__FEATURES": "x"})


def test_an_amount_model_needs_its_carrier_and_stacked_models_enabled(tmp_path):
    env_file = write_env_file(tmp_path, "models:\n  enabled: [paid, sm_mobile]\n")
    with pytest.raises(ConfigError) as err:
        load_settings(env_file, environ={})
    message = str(err.value)  # every problem at once
    assert "profiles.sm_mobile.stacked: 'active' is not an enabled classification model" in message
    assert "profiles.sm_mobile.carrier: 'active' is not an enabled classification model" in message
    assert "profiles.paid.inside: 'active' is not another enabled classification model" in message


def test_subset_of_models_can_be_enabled(tmp_path):
    env_file = write_env_file(tmp_path, "models:\n  enabled: [paid, active, data_gb]\n")
    s = load_settings(env_file, environ={})
    assert [p.model_id for p in s.models.enabled_profiles()] == ["paid", "active", "data_gb"]


def test_missing_config_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_config_show_prints_resolved_yaml(capsys):
    assert main(["config", "show", "--conf", str(CONF / "local.yaml")]) == 0
    out = capsys.readouterr().out
    assert "paths:" in out and "model_name: cltv" in out


def test_an_unexpected_error_exits_70_with_its_traceback_logged(monkeypatch, capsys):
    """70, not 1: Argo retries crashes but not verdicts (1 = promotion refused / drift failed)."""
    import spark_app.cli as cli

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "cmd_config_show", broken)
    assert main(["config", "show", "--conf", str(CONF / "local.yaml")]) == cli.EXIT_CRASH == 70
    err = capsys.readouterr().err
    assert "cltv config: unexpected error (exit code 70)" in err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err


def test_cli_reports_config_error_without_traceback(tmp_path, capsys):
    env_file = write_env_file(tmp_path, "nonsense: 1\n")
    assert main(["config", "show", "--conf", str(env_file)]) == 2
    err = capsys.readouterr().err
    assert "nonsense: Extra inputs are not permitted" in err and "Traceback" not in err


def test_a_file_alone_in_any_directory_is_layered_over_the_packaged_defaults(tmp_path, caplog):
    alone = tmp_path / "elsewhere" / "prod.yaml"
    alone.parent.mkdir()
    alone.write_text("dataset:\n  sample_rate: 0.5\n")
    with caplog.at_level("INFO", logger="spark_app.config"):
        s = load_settings(alone, environ={})
    assert s.dataset.sample_rate == 0.5
    assert [p.model_id for p in s.models.enabled_profiles()] == list(ALL_MODELS)  # models.yaml kept
    assert s.dataset.target_months == 13  # base.yaml kept
    used = caplog.text
    assert "spark_app/conf/base.yaml" in used and "spark_app/conf/models.yaml" in used and str(alone) in used


def test_base_files_beside_the_environment_file_win_over_the_packaged_ones(tmp_path):
    env_file = write_env_file(tmp_path, "{}\n")
    (tmp_path / "base.yaml").write_text((CONF / "base.yaml").read_text().replace("salt: cltv", "salt: mine"))
    assert load_settings(env_file, environ={}).dataset.salt == "mine"


def test_an_unknown_key_in_a_file_alone_is_named_with_its_file(tmp_path, capsys):
    alone = tmp_path / "other" / "x.yaml"
    alone.parent.mkdir()
    alone.write_text("paths:\n  featurez: /x\ndataset:\n  sample_rat: 1\n")
    assert main(["config", "show", "--conf", str(alone)]) == 2
    err = capsys.readouterr().err
    assert f"paths.featurez: Extra inputs are not permitted (from {alone})" in err
    assert (
        f"dataset.sample_rat: Extra inputs are not permitted (from {alone})" in err
    )  # every problem at once


def test_a_directory_given_as_conf_is_a_clear_error(tmp_path, capsys):
    assert main(["config", "show", "--conf", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_the_demo_conf_works_after_being_copied_elsewhere(tmp_path):
    from spark_app.pipeline import write_demo_conf

    demo = write_demo_conf(tmp_path / "demo", None)
    moved = tmp_path / "moved" / "demo.yaml"
    moved.parent.mkdir()
    moved.write_text(demo.read_text())
    assert load_settings(moved, environ={}).paths.scores == load_settings(demo, environ={}).paths.scores


def test_a_ninth_model_is_config_only(tmp_path):
    """A new amount (roaming margin) is declared in conf/ and flows into the catalog and the value formula."""
    env_file = write_env_file(
        tmp_path,
        """models:
  enabled: [paid, active, sm_mobile, sm_fmc, sm_fttb, data_gb, voice_min, sac, roaming]
  profiles:
    roaming:
      kind: regression
      fact: roaming_margin
      feature_cols: [horizon, tenure_months, margin_1m]
      stacked: [active]
      carrier: active
      cltv: {component: roaming, sign: 1}
      naive: {last_value: margin_1m}
""",
    )
    s = load_settings(env_file, environ={})
    catalog = s.models.catalog()
    assert catalog.ids[-1] == "roaming" and catalog["roaming"].features[-1] == "p_active"
    from spark_app.cltv import ValueFormula

    assert "roaming" in ValueFormula.from_catalog(catalog, s.costs).components
    from spark_app.contract import facts_spec

    assert "roaming_margin" in facts_spec(catalog).columns


def test_names_that_must_refer_to_models_or_cost_keys_are_checked_together(tmp_path):
    env_file = write_env_file(
        tmp_path,
        """costs: {overhead_base: sm_mobile}
promotion:
  tolerance: {paid: 0.01, nosuch: 0.01}
  main_metric: {classification: roc_auc, regression: nosuch_metric}
models:
  profiles:
    data_gb: {cltv: {component: data_cost, sign: -1, unit_cost: cost_per_tb}}
""",
    )
    with pytest.raises(ConfigError) as err:
        load_settings(env_file, environ={})
    message = str(err.value)
    assert "costs.overhead_base: 'sm_mobile' is not an enabled classification model" in message
    assert "promotion.tolerance: unknown model ids ['nosuch']" in message
    assert "promotion.main_metric.regression: unknown metric 'nosuch_metric'" in message
    assert "data_gb.cltv.unit_cost: 'cost_per_tb' is neither a number nor a costs key" in message


def test_overriding_one_model_does_not_change_models_sharing_a_yaml_alias(tmp_path):
    env_file = write_env_file(tmp_path, "models:\n  profiles:\n    paid: {params: {iterations: 7}}\n")
    catalog = load_settings(env_file, environ={}).models.catalog()
    assert catalog["paid"].params["iterations"] == 7 and catalog["active"].params["iterations"] == 600


def test_catboost_basics_are_checked_at_start(tmp_path):
    env_file = write_env_file(tmp_path, "models:\n  profiles:\n    sac: {params: {iterations: -5}}\n")
    with pytest.raises(
        ConfigError, match=r"models\.profiles\.sac\.params.*iterations must be an integer >= 1"
    ):
        load_settings(env_file, environ={})


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("spark.hadoop.fs.s3a.secret.key", True), ("spark.hadoop.fs.s3a.access.key", True),
        ("spark.hadoop.fs.s3a.session.token", True), ("spark.ssl.keyPassword", True),
        ("fs.azure.account.key.acct.blob.core.windows.net", True), ("fs.azure.sas.c.acct.blob", True),
        ("spark.kerberos.keytab", True), ("db_password", True), ("api_key", True), ("apiKey", True),
        ("credentials", True), ("SASToken", True), ("MLFLOW_TRACKING_TOKEN", True),
        ("ranking_key", False), ("tenure_column", False), ("holdout_salt", False), ("kerberos", False),
        ("webhdfs_user", False), ("tokenizer", False), ("spark.authenticate.enableSaslEncryption", False),
        ("primary_key", False), ("max_tokens", False),
    ],
)  # fmt: skip
def test_the_secret_key_pattern_masks_secrets_and_leaves_other_keys_visible(key, secret):
    assert is_secret_key(key) is secret


def test_secret_values_are_masked_in_resolved_config_and_in_every_log_line():
    settings = load_settings(
        None,
        environ={"CLTV_SPARK__CONF": "{spark.hadoop.fs.s3a.secret.key: AbCdSecret9, spark.x: 4}"},
    )
    conf = settings.resolved()["spark"]["conf"]
    assert conf == {"spark.hadoop.fs.s3a.secret.key": "***", "spark.x": 4}
    assert "AbCdSecret9" not in dump_yaml(settings) and "AbCdSecret9" not in settings.config_hash()
    assert redact("conf {'spark.hadoop.fs.s3a.secret.key': 'AbCdSecret9'}") == (
        "conf {'spark.hadoop.fs.s3a.secret.key': '***'}"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("dataset.target_months", 121), ("dataset.horizons", [1, 61]), ("spark.shuffle_partitions", 10**9),
     ("training.thread_count", 5000), ("scoring.arrow_batch_rows", 10**12),
     ("monitoring.backtest_max_horizon", 100), ("promotion.lock_wait_seconds", -1)],
)  # fmt: skip
def test_numeric_settings_are_bounded(tmp_path, field, value):
    section, key = field.split(".")
    conf = tmp_path / "env.yaml"
    conf.write_text(yaml.safe_dump({section: {key: value}}))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(conf, environ={})


def test_a_key_twice_in_a_nested_mapping_is_named_with_its_lines(tmp_path):
    conf = tmp_path / "env.yaml"
    conf.write_text("spark:\n  app_name: a\n  app_name: b\n")
    with pytest.raises(ConfigError, match=r"key 'app_name' appears twice .*lines 2 and 3"):
        load_settings(conf, environ={})


# ------------------------------------------------------------------ `config show`: one key, origins, hints
def test_config_show_without_conf_uses_the_embedded_local_yaml(capsys, monkeypatch):
    monkeypatch.delenv("CLTV_PATHS__FEATURES", raising=False)
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["spark"]["master"] == "local[*]"
    # lists of scalars one line each: the whole configuration fits a screenful or two, not 581 lines
    assert f"  horizons: {list(range(1, 25))}\n" in out
    assert len(out.splitlines()) < 400


def test_config_show_key_prints_one_value_as_yaml(capsys):
    assert main(["config", "show", "--key", "dataset.sample_rate"]) == 0
    assert capsys.readouterr().out == "1.0\n"
    assert main(["config", "show", "--key", "mlflow.registry_uri"]) == 0
    assert capsys.readouterr().out == "null\n"
    assert main(["config", "show", "--key", "costs"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["cost_per_gb"] == 0.35


def test_an_unknown_key_suggests_the_closest_valid_one(tmp_path, capsys):
    assert main(["config", "show", "--key", "dataset.sample_rat"]) == 2
    assert "no key 'dataset.sample_rat'; did you mean 'dataset.sample_rate'?" in capsys.readouterr().err
    env_file = write_env_file(
        tmp_path, "scoring:\n  holdout_shar: 0.1\nmodels:\n  profiles:\n    sac: {paramz: {}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_settings(env_file, environ={})
    assert f"scoring.holdout_shar: Extra inputs are not permitted (from {env_file}); did you mean " in str(
        err.value
    )
    assert "did you mean 'scoring.holdout_share'?" in str(err.value)
    assert "did you mean 'models.profiles.sac.params'?" in str(err.value)
    with pytest.raises(ConfigError, match=r"CLTV_MONITORNG__PSI_WARN: .*did you mean 'monitoring'\?"):
        load_settings(None, environ={"CLTV_MONITORNG__PSI_WARN": "0.2"})
    with pytest.raises(
        ConfigError, match=r"\(from env CLTV_MONITORING__PSI_WAR\); did you mean 'monitoring.psi_warn'\?"
    ):
        load_settings(None, environ={"CLTV_MONITORING__PSI_WAR": "0.2"})


def test_config_show_origin_names_the_layer_of_every_value_with_secrets_masked(tmp_path, capsys, monkeypatch):
    env_file = write_env_file(tmp_path, "dataset:\n  sample_rate: 0.25\n")
    monkeypatch.setenv("CLTV_SPARK__CONF", "{spark.hadoop.fs.s3a.secret.key: AbCdSecret9}")
    monkeypatch.setenv("CLTV_MLFLOW__TRACKING_URI", "http://bob:hunter22@mlflow:5000")
    assert main(["config", "show", "--conf", str(env_file), "--origin"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["dataset.sample_rate"] == ["0.25", str(env_file)]
    assert rows["dataset.salt"] == ["cltv", str(tmp_path / "base.yaml")]
    assert rows["mlflow.tracking_uri"] == ["http://bob:***@mlflow:5000", "env", "CLTV_MLFLOW__TRACKING_URI"]
    assert rows["spark.conf.spark.hadoop.fs.s3a.secret.key"] == ["'***'", "env", "CLTV_SPARK__CONF"]
    assert rows["models.profiles.paid.model_id"][-1] == "default"  # no layer sets it: its key names it
    assert rows["dataset.horizons"][0].startswith("[1,")  # a list on one line
    assert main(["config", "show", "--conf", str(env_file), "--key", "spark.conf"]) == 0
    out = capsys.readouterr().out
    assert "AbCdSecret9" not in out and "***" in out
    assert main(["config", "show", "--conf", str(env_file), "--key", "mlflow", "--origin"]) == 0
    out = capsys.readouterr().out
    assert "hunter22" not in out and all(line.startswith("mlflow.") for line in out.splitlines())


def test_the_readme_writes_every_default_as_a_yaml_value():
    """`5%` or `60 s` is what a person types into a config file from the README: each default must be the
    value itself (a number, a string, a list), remarks in parentheses."""
    import re

    readme = (CONF.parent / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    cells = [line.split(" | ")[1] for line in readme.splitlines() if line.startswith("| `")]
    assert len(cells) > 30
    for cell in cells:
        if cell.startswith("see ") or cell.startswith("`retention`"):
            continue
        text = re.sub(r"\s*\([^)]*\)", "", cell).replace("`", "")
        depth, piece, pieces = 0, "", []
        for ch in text + ",":
            depth += ch in "[{" and not piece.endswith("local")
            depth -= ch in "]}" and depth > 0
            if ch == "," and depth == 0:
                pieces.append(piece.strip())
                piece = ""
            else:
                piece += ch
        for piece in pieces:
            assert "%" not in piece and not re.search(r"\d\s+(s|points|min)\b", piece), cell
            yaml.safe_load(piece)  # raises on what YAML cannot read
