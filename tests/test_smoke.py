from conftest import records, run_train


def test_baseline_job_writes_ok_record(workdir):
    proc = run_train("data=synthetic", "model=mlp", check=True)
    (rec,) = records(workdir / "outputs")
    assert rec["status"] == "ok", proc.stderr
    assert 0 <= rec["metrics"]["test_acc"] <= 1
