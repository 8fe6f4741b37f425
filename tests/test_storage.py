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
