"""Storage (Hadoop FileSystem API) on file://: the operations the jobs rely on, and the staged swap."""

from __future__ import annotations

import pytest

from spark_app.storage import SUCCESS, Storage, write_parquet_staged


@pytest.fixture
def storage(spark) -> Storage:
    return Storage(spark)


def test_basic_operations_on_file_uris(storage, tmp_path):
    root = f"file://{tmp_path}/t"
    assert not storage.exists(root) and storage.list_dir(root) == []
    storage.write_text(f"{root}/a/note.txt", "héllo")
    storage.write_json(f"{root}/a/m.json", {"b": 1, "a": [1, 2]})
    assert storage.read_text(f"{root}/a/note.txt") == "héllo"
    assert storage.read_json(f"{root}/a/m.json") == {"a": [1, 2], "b": 1}
    assert storage.list_dir(f"{root}/a") == ["m.json", "note.txt"]
    storage.rename(f"{root}/a", f"{root}/b")
    assert not storage.exists(f"{root}/a") and storage.exists(f"{root}/b/note.txt")
    storage.delete(f"{root}/b")
    assert not storage.exists(f"{root}/b")
    assert storage.qualify(str(tmp_path)).startswith("file:")


def test_a_failed_rename_never_passes_silently(storage, tmp_path):
    # Hadoop's local FS raises FileNotFoundException (surfacing as Py4JJavaError, not OSError) for a missing
    # source; a `false` return becomes OSError("rename failed") — either way the caller stops.
    with pytest.raises(Exception, match="missing"):
        storage.rename(f"{tmp_path}/missing", f"{tmp_path}/elsewhere")


def test_staged_swap_replaces_the_old_directory_whole(spark, storage, tmp_path):
    target = str(tmp_path / "scores" / "score_month=2026-04-01")
    write_parquet_staged(storage, spark.range(5).toDF("n"), target)
    write_parquet_staged(storage, spark.range(3).toDF("n"), target)
    assert storage.has_success_marker(target)
    assert sorted(r.n for r in spark.read.parquet(target).collect()) == [0, 1, 2]
    assert [n for n in storage.list_dir(str(tmp_path / "scores")) if n.startswith("_")] == []


def test_failure_inside_staged_leaves_the_old_directory_intact(spark, storage, tmp_path):
    target = str(tmp_path / "out")
    write_parquet_staged(storage, spark.range(4).toDF("n"), target)
    with pytest.raises(RuntimeError, match="boom"), storage.staged(target) as staging:
        spark.range(100).toDF("n").write.parquet(staging)
        raise RuntimeError("boom")
    assert sorted(r.n for r in spark.read.parquet(target).collect()) == [0, 1, 2, 3]
    assert storage.list_dir(str(tmp_path)) == ["out"]  # staging dropped, nothing retired
    assert SUCCESS in storage.list_dir(target)


KILLED_WRITER = """
import os, sys
from spark_app.config import SparkConfig
from spark_app.session import get_spark
from spark_app.storage import Storage

target, kill_at = sys.argv[1], sys.argv[2]
spark = get_spark(SparkConfig(master="local[1]", driver_memory="1g"))
storage = Storage(spark)
if kill_at == "mid-swap":  # SIGKILL-like exit right after the old target was renamed aside
    rename = storage.rename
    def rename_then_die(src, dst):
        rename(src, dst)
        os._exit(9)
    storage.rename = rename_then_die
with storage.staged(target) as staging:
    spark.range(7).toDF("n").write.parquet(staging)
    if kill_at == "before-swap":
        os._exit(9)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["before-swap", "mid-swap"])
def test_a_killed_writer_never_costs_the_previous_partition(spark, storage, tmp_path, kill_at):
    import subprocess
    import sys

    target = str(tmp_path / "scores" / "score_month=2026-04-01")
    write_parquet_staged(storage, spark.range(3).toDF("n"), target)
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, target, kill_at], capture_output=True)
    assert killed.returncode == 9, killed.stderr.decode()[-2000:]
    names = storage.list_dir(str(tmp_path / "scores"))
    assert any(n.startswith("_") for n in names)  # the killed run left its staging / retired directory
    # the next run of the month first recovers, then swaps in its own rows; nothing is left behind
    storage.recover(target)
    assert sorted(r.n for r in spark.read.parquet(target).collect()) == [0, 1, 2]
    write_parquet_staged(storage, spark.range(5).toDF("n"), target)
    assert sorted(r.n for r in spark.read.parquet(target).collect()) == [0, 1, 2, 3, 4]
    assert storage.list_dir(str(tmp_path / "scores")) == ["score_month=2026-04-01"]
